"""chexlab's user interfaces: the Gradio demo and the Streamlit comparison page."""

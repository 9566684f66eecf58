"""chexlab's training backend: reading radiographs, preprocessing, training, evaluation and export.

Nothing in this package imports gradio or streamlit; the demo builds on it, never the reverse.
"""

__version__ = "0.1.0"

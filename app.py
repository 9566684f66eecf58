"""chexlab's Gradio demo (the Hugging Face Spaces `app_file`): `python app.py` serves http://127.0.0.1:7860.

Models: demo/models/nih-binary by default; CHEXLAB_DEFAULT_MODEL picks another (a folder or a Hub id),
CHEXLAB_MODELS offers more Hub ids ("org/a,org/b"), CHEXLAB_EXAMPLES adds example images (folders).
"""

import logging

from demo.gradio_ui import build_demo, launch_options
from demo.predictor import Predictor
from trainer.allocator import tune_allocator

tune_allocator()  # before the first model loads; see trainer/allocator.py
demo = build_demo(Predictor.from_env())

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo.launch(**launch_options())

"""chexlab's Gradio demo (the Hugging Face Spaces `app_file`): `python app.py` serves http://127.0.0.1:7860.

Models: demo/models/nih-binary by default; CHEXLAB_DEFAULT_MODEL picks another (a folder or a Hub id),
CHEXLAB_MODELS offers more Hub ids ("org/a,org/b"), CHEXLAB_EXAMPLES adds example images (folders).
Public mode (see README) is on where the app is reachable by others: on a Space, when GRADIO_SERVER_NAME is
not a loopback address, or with CHEXLAB_PUBLIC=1; CHEXLAB_PUBLIC=0 forces local mode.
"""

import logging

from demo.cpu_server import leave_out_gpu_compiler
from trainer.allocator import Profile, tune_allocator

leave_out_gpu_compiler()  # before torch is imported: the demo runs on the CPU (see demo/cpu_server.py)
tune_allocator(Profile.SERVER)  # before the request threads exist: see trainer/allocator.py

from demo.catalog import is_public  # noqa: E402
from demo.gradio_ui import build_demo, launch_options  # noqa: E402
from demo.predictor import Predictor  # noqa: E402

options = launch_options()
demo = build_demo(Predictor.from_env(public=is_public(bind_address=options["server_name"])))

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo.launch(**options)

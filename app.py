"""chexlab's Gradio demo (the Hugging Face Spaces `app_file`): `python app.py` serves http://127.0.0.1:7860.

Models: demo/models/nih-binary by default; CHEXLAB_DEFAULT_MODEL picks another (a folder or a Hub id),
CHEXLAB_MODELS offers more Hub ids ("org/a,org/b"), CHEXLAB_EXAMPLES adds example images (folders).
Public mode (see README) is on where the app is reachable by others: on a Space, when GRADIO_SERVER_NAME is
not a loopback address, or with CHEXLAB_PUBLIC=1; CHEXLAB_PUBLIC=0 forces local mode.
"""

import logging

from demo.cpu_server import leave_out_gpu_compiler
from trainer.allocator import Profile, tune_allocator

# Before the start-up thread logs that the models are ready.
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
leave_out_gpu_compiler()  # before torch is imported: the demo runs on the CPU (see demo/cpu_server.py)
tune_allocator(Profile.SERVER)  # before the request threads exist: see trainer/allocator.py

from demo.catalog import ModelCatalog, is_public  # noqa: E402
from demo.gradio_ui import build_demo, launch_options  # noqa: E402
from demo.startup import Startup  # noqa: E402

options = launch_options()
# The page serves while torch, timm and the default model load in a thread (demo/startup.py).
startup = Startup(ModelCatalog.from_env(public=is_public(bind_address=options["server_name"])))
demo = build_demo(startup)

if __name__ == "__main__":
    demo.launch(prevent_thread_lock=True, **options)
    startup.start()  # once the page serves; importing this module instead starts it on the first need
    demo.block_thread()

import os

# Tests never reach a model hub; sentence-transformers and open_clip must work offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

# Two cores are shared by the test process and any dask workers it starts.
torch.set_num_threads(min(2, torch.get_num_threads()))

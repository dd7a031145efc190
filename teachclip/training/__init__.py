"""What every training stage shares, one copy each (the training step itself stays in each stage,
written out in full, so that a reader sees it on one screen):

- :mod:`.optim`: seeding, AdamW over named parameter groups, warmup + cosine, one optimizer step;
- :mod:`.batches`: the samplers (CLIP4Clip's caption-per-video epoch, neighbourhood batches of a
  sparse cache, the caption mask) and the prefetching frames reader;
- :mod:`.state`: training-state checkpoints that make ``--resume`` exact;
- :mod:`.log`: per-epoch metrics (TSV/JSON) and running losses;
- :mod:`.scoring`: a model's similarity matrix over a split and its retrieval metrics;
- :mod:`.contrastive`: the symmetric-InfoNCE loop of ``train-teacher``;
- :mod:`.distributed`: torchrun/DDP with a gradient-correct all_gather.
"""

"""Models: the open_clip backbone, the CLIP4Clip+AFA student, the teachers, losses and metrics.

:mod:`.factory` builds and loads every model (one registry of teacher kinds, in :mod:`.teachers`);
:mod:`.io` is the model file format; :mod:`.scorer` the one scoring interface evaluation uses.
"""

"""The teachers: X-Pool, X-CLIP, TS2-Net, frame-CLIP (trainable, CLIP-backed) and caption similarity
(a frozen sentence-embedding model).

:data:`TEACHERS` is the one registry of teacher kinds (``TeacherConfig.kind`` names an entry; a class
says whether it can be trained); :func:`teachclip.models.factory.create_teacher` builds one.
"""

from __future__ import annotations

from teachclip.models.teachers.base import Features, Teacher, TextBatch, VideoBatch
from teachclip.models.teachers.caption_sim import CaptionSimTeacher
from teachclip.models.teachers.frame_clip import FrameClipTeacher
from teachclip.models.teachers.ts2net import TS2NetTeacher
from teachclip.models.teachers.xclip import XClipTeacher
from teachclip.models.teachers.xpool import XPoolTeacher

TEACHERS: dict[str, type[Teacher]] = {
    cls.kind: cls for cls in (XPoolTeacher, XClipTeacher, TS2NetTeacher, FrameClipTeacher, CaptionSimTeacher)
}


def trainable_kinds() -> list[str]:
    """Kinds that ``teach train-teacher`` can train (the others bring their own weights)."""
    return [kind for kind, cls in TEACHERS.items() if cls.trainable]


__all__ = ["TEACHERS", "Features", "Teacher", "TextBatch", "VideoBatch", "trainable_kinds"]

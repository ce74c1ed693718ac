"""GET /emotions: the S1 markers a text may contain."""

from __future__ import annotations

from fastapi import APIRouter

from serving.schemas import EmotionList
from serving.services.emotions import MARKERS

router = APIRouter(tags=["speech"])

USAGE = "Write markers in parentheses: emotions at a sentence start, tones and effects anywhere."


@router.get("/emotions")
async def emotions() -> EmotionList:
    return EmotionList(markers={k: [f"({m})" for m in v] for k, v in MARKERS.items()}, usage=USAGE)

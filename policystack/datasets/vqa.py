"""Vision-language examples stored as LeRobot v3 datasets: the format co-training reads.

A vision-language dataset (``policystack vqa``, ``envs/vqa.py``) is an action-free LeRobot v3 dataset
whose frames are camera images of a scene and whose ``task`` holds one question and its answer:

    "where is the red ball?\\nA: (0.42, 0.61)"

``vl_task(question, answer)`` writes that text and ``split_vl_task(text)`` reads it back: the question
is everything before the last ``"\\nA: "``, the answer everything after. Keeping the example in the
``task`` column lets the dataset go through the same writer, loader, frame cache and LeRobot's own
``LeRobotDataset`` as any robot dataset (the LeRobot v3 writer takes no other string column).
"""

from __future__ import annotations

ANSWER_MARK = "\nA: "
VL_PROMPT = "In: {question}\nOut:"  # a VLM's prompt for one question (RT-2 co-training, the describer)


def vl_task(question: str, answer: str) -> str:
    """The ``task`` text of one example; the question must not contain the answer mark."""
    if ANSWER_MARK in question or "\n" in answer:
        raise ValueError(f"vision-language example {question!r} -> {answer!r}: the question may not contain "
                         f"{ANSWER_MARK!r} and the answer may not contain a newline")
    return f"{question}{ANSWER_MARK}{answer}"


def split_vl_task(text: str) -> tuple[str, str]:
    """(question, answer) of a vision-language dataset's ``task`` text."""
    question, mark, answer = text.rpartition(ANSWER_MARK)
    if not mark:
        raise ValueError(f"task {text!r:.120} is not a vision-language example (expected 'question{ANSWER_MARK}"
                         "answer', as `policystack vqa` writes); a robot dataset needs an 'action' feature")
    return question, answer

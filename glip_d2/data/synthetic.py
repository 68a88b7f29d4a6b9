"""The glip_synth benchmark's vocabulary, held-out combinations and default sizes.

glip_synth is a small, deterministic grounding benchmark of coloured shapes; its renderer and
writer is ``datasets/prepare_glip_synth.py`` (see ``datasets/README.md``). The package keeps
only what the dataset registrations need: the category names (fixed across splits, category
id = index in :data:`ALL_CLASSES` + 1) and which colour-shape pairs are held out of train/val.
"""

__all__ = [
    "COLORS",
    "SHAPES",
    "HELDOUT",
    "ALL_CLASSES",
    "SEEN_CLASSES",
    "HELDOUT_CLASSES",
    "HELDOUT_GROUP",
    "DEFAULT_COUNTS",
    "CAPTION_SPLIT_SIZE",
    "NOVEL_COLORS",
    "NOVEL_SHAPES",
    "NOVEL_CLASSES",
    "NOVEL_COUNTS",
]

COLORS = {
    "red": (220, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 70, 225),
    "yellow": (240, 215, 35),
    "purple": (150, 55, 195),
}
SHAPES = ("circle", "square", "triangle", "star")
# Held out of train/val: every colour and every shape still occurs in other combinations.
HELDOUT = (("blue", "star"), ("yellow", "circle"), ("purple", "triangle"))
ALL_CLASSES = [f"{c} {s}" for c in COLORS for s in SHAPES]  # category id = index + 1
SEEN_CLASSES = [n for n in ALL_CLASSES if tuple(n.split()) not in HELDOUT]
HELDOUT_CLASSES = [" ".join(p) for p in HELDOUT]  # "blue star", "yellow circle", ...
# Name of the held-out classes' group in glip_synth_test_heldout's evaluation: its results hold
# "AP-heldout_combinations", "AP50-heldout_combinations" and "AP50-<class>".
HELDOUT_GROUP = "heldout_combinations"
DEFAULT_COUNTS = {"train": 600, "val": 120, "test_heldout": 120}  # images per split
# The caption-only split (no boxes, every combination) of the self-training experiment: 4x train.
CAPTION_SPLIT_SIZE = 2400

# glip_novel, the transfer experiment's new domain (datasets/prepare_glip_novel.py, issue #15):
# colours and shapes that glip_synth never shows, every combination in train and val.
NOVEL_COLORS = {
    "orange": (245, 130, 20),
    "pink": (240, 110, 185),
    "cyan": (30, 200, 215),
}
NOVEL_SHAPES = ("diamond", "hexagon", "cross")
NOVEL_CLASSES = [f"{c} {s}" for c in NOVEL_COLORS for s in NOVEL_SHAPES]  # id = index + 1
NOVEL_COUNTS = {"train": 300, "val": 90}  # images per split

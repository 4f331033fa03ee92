"""The patches world's zero-shot tasks: one per attribute (texture, hue, position, size). A task
image is a scene with that attribute set to its class and the others drawn at random; the
prompts use the canonical caption words in caption frames (captions.FRAMES 0 and 3) and average
over the attributes the task does not ask about (clip_benchmark averages a class's templates)."""
from __future__ import annotations

from dataclasses import dataclass

from gaussianvision.apps.worlds.patches.scene import ATTRIBUTES, HUES, SIZES, TEXTURES

__all__ = ["PatchTask", "TASKS", "TASK_NAMES"]


@dataclass(frozen=True)
class PatchTask:
    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    description: str

    @property
    def chance(self) -> float:
        return 1.0 / len(self.classes)

    def fixed(self, label: int) -> dict:
        """sample_scene's keyword fixing this task's attribute to class `label`."""
        return {("size_class" if self.name == "size" else self.name): self.classes[label]}


TASKS = {
    "texture": PatchTask("texture", ATTRIBUTES["texture"],
                         tuple(f"a photo of a {s} {h} {{c}} patch." for s in SIZES for h in HUES),
                         "one patch on noise; class = its texture"),
    "hue": PatchTask("hue", ATTRIBUTES["hue"],
                     tuple(f"a photo of a {s} {{c}} {t} patch." for s in SIZES for t in TEXTURES),
                     "one patch on noise; class = its hue"),
    "position": PatchTask("position", ATTRIBUTES["position"],
                          tuple(f"a {h} {t} patch in the {{c}}." for h in HUES for t in TEXTURES),
                          "one patch on noise; class = the quadrant of its centre"),
    "size": PatchTask("size", ATTRIBUTES["size"],
                      tuple(f"a {{c}} {h} {t} patch." for h in HUES for t in TEXTURES),
                      "one patch on noise; class = its size (small, medium, large)"),
}
TASK_NAMES = tuple(TASKS)

"""The patches world: 64 px scenes of one textured patch (texture, hue, position, size) on a noisy
gray background, captioned in its own grammar, with one zero-shot task per attribute. A second
world family beside the demo's shapes (docs/world.md, "The patches world").

    from gaussianvision.apps.worlds.patches import make_world
    world = make_world("out/patches")       # 2400 train, 200 test, 240 per task
"""
from gaussianvision.apps.worlds.patches.captions import FRAMES, SYNONYMS, caption
from gaussianvision.apps.worlds.patches.scene import ATTRIBUTES, render_scene, sample_scene, texture_mask
from gaussianvision.apps.worlds.patches.tasks import TASK_NAMES, TASKS
from gaussianvision.apps.worlds.patches.world import DEFAULTS, make_world, task_sample, train_sample

__all__ = ["make_world", "train_sample", "task_sample", "sample_scene", "render_scene", "texture_mask", "caption",
           "FRAMES", "SYNONYMS", "ATTRIBUTES", "TASKS", "TASK_NAMES", "DEFAULTS"]

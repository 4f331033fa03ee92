"""The offline world: captioned synthetic scenes and held-out zero-shot tasks.

    from gaussianvision.apps.demo.world import make_world, iter_samples, iter_task
    world = make_world("out/world", quick=True)          # cached by out/world/manifest.json
    for img, caption, meta in iter_samples(world["out_dir"], "train"): ...
    for img, label, meta in iter_task(world["tasks"]["color"]["root"]): ...

Design and chance levels: docs/world.md.
"""
from gaussianvision.apps.demo.world.captions import caption_scene
from gaussianvision.apps.demo.world.reader import decode_image, iter_samples, iter_task, shard_paths
from gaussianvision.apps.demo.world.scenes import (ALL_BACKGROUNDS, BACKGROUNDS, COLORS, RELATIONS, SHAPES, SIZES, nearest_color,
                     render_scene, sample_scene)
from gaussianvision.apps.demo.world.tasks import TASK_NAMES, TASKS, Task
from gaussianvision.apps.demo.world.world import (DEFAULT_HOLDOUT, DEFAULTS, GENERATOR_VERSION, QUICK, load_world, make_world,
                    task_sample, train_sample)

__all__ = ["make_world", "load_world", "iter_samples", "iter_task", "shard_paths", "decode_image",
           "render_scene", "sample_scene", "caption_scene", "train_sample", "task_sample",
           "TASKS", "TASK_NAMES", "Task", "SHAPES", "COLORS", "SIZES", "RELATIONS", "BACKGROUNDS",
           "ALL_BACKGROUNDS", "nearest_color", "DEFAULT_HOLDOUT", "DEFAULTS", "QUICK",
           "GENERATOR_VERSION"]

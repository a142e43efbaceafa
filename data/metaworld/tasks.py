"""The Meta-World task table: instruction phrasings, step limits and the default robot / video task split.

Only tasks listed here can be generated or evaluated: each needs a language template and a step limit that was
checked against its scripted expert (docs/metaworld.md has the measured expert lengths and success rates). The
robot (action-labelled) and video (action-free) default sets are disjoint, so a model pretrained on the video tasks
is fine-tuned and evaluated on tasks it has never seen with actions.
"""

from __future__ import annotations

import dataclasses

from core.errors import InvalidInput, unknown


@dataclasses.dataclass(frozen=True)
class MetaWorldTask:
    """One Meta-World v3 environment. max_steps: the episode step limit (data generation and evaluation)."""

    name: str  # the Meta-World environment name, e.g. "reach-v3"
    phrasings: tuple[str, ...]  # several instructions for the same task; an episode's seed picks one
    max_steps: int = 200

    def instruction(self, seed: int) -> str:
        return self.phrasings[seed % len(self.phrasings)]


TASKS: dict[str, MetaWorldTask] = {t.name: t for t in (
    MetaWorldTask("reach-v3", ("reach the red target", "move the gripper to the goal",
                               "put the hand on the target point"), 150),
    MetaWorldTask("push-v3", ("push the puck to the goal", "slide the block onto the target",
                              "move the puck to the green spot"), 200),
    MetaWorldTask("drawer-open-v3", ("open the drawer", "pull the drawer out", "slide the drawer open"), 200),
    MetaWorldTask("button-press-topdown-v3", ("press the button from above", "push the button down",
                                              "press down on the red button"), 200),
    MetaWorldTask("window-open-v3", ("open the window", "slide the window open", "push the window to the left"),
                  200),
    MetaWorldTask("door-open-v3", ("open the door", "pull the door open", "swing the door open"), 200),
    MetaWorldTask("drawer-close-v3", ("close the drawer", "push the drawer shut", "slide the drawer closed"), 200),
    MetaWorldTask("button-press-v3", ("press the button", "push the button forward",
                                      "press the red button in front"), 200),
    MetaWorldTask("window-close-v3", ("close the window", "slide the window shut",
                                      "push the window to the right"), 200),
    MetaWorldTask("faucet-open-v3", ("turn the faucet on", "open the faucet", "rotate the tap handle open"), 200),
    MetaWorldTask("plate-slide-v3", ("slide the plate into the goal", "push the plate into the net",
                                     "move the plate to the target"), 200),
    MetaWorldTask("coffee-button-v3", ("press the coffee machine button", "start the coffee machine",
                                       "push the button on the coffee maker"), 200),
)}
ROBOT_TASKS = ("reach-v3", "push-v3", "drawer-open-v3", "button-press-topdown-v3", "window-open-v3", "door-open-v3")
VIDEO_TASKS = ("drawer-close-v3", "button-press-v3", "window-close-v3", "faucet-open-v3", "plate-slide-v3",
               "coffee-button-v3")


def get_task(name: str) -> MetaWorldTask:
    """Table lookup; an unknown name is one `InvalidInput` (a ValueError) line with a "did you mean"."""
    if name not in TASKS:
        raise InvalidInput(unknown("Meta-World task", name, TASKS))
    return TASKS[name]


def generated_tasks(data_root: str) -> list[str]:
    """The tasks `metaworld_robot` under `data_root` was generated for (its generation.json `robot_tasks`): what the
    policies are fine-tuned on and the only tasks they are evaluated on (scripts/compare.py, policy.finetune)."""
    import json
    import os

    try:
        with open(os.path.join(data_root, "metaworld_robot", "1.0.0", "generation.json")) as f:
            tasks = json.load(f).get("robot_tasks")
    except (OSError, ValueError, AttributeError):
        tasks = None
    if not tasks:
        raise InvalidInput(f"{data_root!r}: no metaworld_robot dataset with its generation.json (expected "
                           "scripts/make_metaworld_data.py --out)")
    return list(tasks)

"""The fleet simulator: procedural forward-camera road scenes, written as MCAP clips (DESIGN.md §1, §6).

    scene   the world without pixels: SimExtras, sampled scenes and actors, the labels, the drift
    draw    the camera and the painter: each thing of a scene drawn into a frame's layers
    render  background, weather and camera response over whole clips; render_*; JPEG; the World a
            fleet sees (RoadWorld built in; another can be passed to simulate and render_frames)
    fleet   simulate: records clips, picks the uploads, writes them to landing; its state
    annotator  the simulated labeling team: answers the Label Studio queue through labeling/ files

The names below are the ones the rest of the flywheel uses (`from flywheel.sim import simulate`,
`sim.render_frames`, ...).
"""

from flywheel.sim.draw import camera_for
from flywheel.sim.fleet import read_state, simulate
from flywheel.sim.render import ROAD, RoadWorld, World, render_clip, render_frames, render_scene
from flywheel.sim.scene import EXTRAS, SimExtras, condition_mix, sample_scene

__all__ = [
    "EXTRAS", "ROAD", "RoadWorld", "SimExtras", "World", "camera_for", "condition_mix", "read_state", "render_clip",
    "render_frames", "render_scene", "sample_scene", "simulate",
]  # fmt: skip

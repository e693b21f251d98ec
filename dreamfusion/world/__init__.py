"""The embedded prior's world: what its prompts name and what is known true of them.

    primitives.py   the vocabulary (colours, shapes, relations), prompts -> scenes, the shapes' SDFs and inside tests,
                    sphere-traced renders of a shape or a scene
    renders.py      coverage images of a shape or a scene seen by cameras (what the prior's image set is made of)
    scores.py       an exported asset against a prompt's known scene: IoU, colour error, relation, Janus score

Both the embedded prior (a noise model, dreamfusion/guidance/models/prior.py) and the scores (ground truth) read it;
it knows no guidance. Import the modules themselves (``from dreamfusion.world.primitives import parse_scene``).
"""

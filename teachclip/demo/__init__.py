"""The built-in demo benchmark's world: its vocabulary and ground-truth data model
(:mod:`.vocabulary`) and its pixels (:mod:`.render`). ``teach demo-data`` (teachclip/stages/demo_data.py)
plans and writes a benchmark; ``teach pretrain-backbone`` words captions of single frames with the same
vocabulary."""

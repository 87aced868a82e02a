"""This engine's logits for any model directory (DDA or Community Forensics), one JSON line per image.

`dda scan` serves DDA-layout models only; this scores a file list with the engine's own
decode, preprocessing and torch network (fp32, CPU), in the format tools/compare_logits.py reads.

    python tools/model_logits.py MODEL_DIR IMAGE...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.imaging.decode import decode_rgb
from engine.model.model_dir import load_model_dir
from engine.runners.detector import Detector
from engine.runners.torch_runner import TorchRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    loaded = load_model_dir(Path(args.model))
    detector = Detector(loaded.manifest, TorchRunner(loaded.network, loaded.manifest.preprocessing))
    for path in args.images:
        rgb = decode_rgb(Path(path).read_bytes())
        [prediction] = detector.predict([rgb])
        print(json.dumps({"input": path, "size": [rgb.shape[1], rgb.shape[0]], "logit": prediction.logit}), flush=True)


if __name__ == "__main__":
    main()

"""GSM8K by name for progrs.py's --data gsm8k / --eval-data gsm8k: the original release's splits (MIT
licence), downloaded once, checked against a pinned line count and sha256, and written atomically into
the cache progrs.load_data reads (PROGRS_CACHE, default ~/.cache/progrs). PROGRS_GSM8K_URL names a
mirror. A failed or unexpected download is one line naming the flag and a way out (a local copy).
"""
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from progrs import ProgrsError, first_line  # noqa: E402

GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data"
GSM8K_SPLITS = {"train": (7473, "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
                "test": (1319, "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14")}


def download(split: str, path: Path, flag: str) -> None:
    """The pinned `split` into `path`, or a ProgrsError."""
    url = f"{os.environ.get('PROGRS_GSM8K_URL', GSM8K_URL).rstrip('/')}/{split}.jsonl"
    hint = f"pass a local copy instead: {flag} path/to/gsm8k_{split}.jsonl"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except (OSError, ValueError) as e:  # URLError, timeouts and refused connections are OSErrors
        raise ProgrsError(f"{flag} gsm8k: could not download {url} ({first_line(getattr(e, 'reason', e))}); "
                          f"{hint}") from None
    lines, sha = GSM8K_SPLITS[split]
    got_lines = data.count(b"\n")
    got_sha = hashlib.sha256(data).hexdigest()
    if (got_lines, got_sha) != (lines, sha):
        raise ProgrsError(f"{flag} gsm8k: {url} is not the pinned GSM8K {split} split ({got_lines} lines, "
                          f"sha256 {got_sha[:12]}...; expected {lines}, {sha[:12]}...); {hint}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".part").write_bytes(data)
    path.with_suffix(".part").replace(path)  # atomic: never half a file in the cache

"""Regenerate the flag table of docs/configuration.md from the declarations in ``v2server/settings.py``.

Usage::

    python scripts/update_flag_table.py           # rewrite the table between the flags:begin/end markers
    python scripts/update_flag_table.py --check   # exit 1 if the table is stale (what the unit test checks)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from v2server.cli import with_flag_table  # after the path insert: the checkout, not an installed copy

DOCUMENT = ROOT / "docs" / "configuration.md"


def main(argv: list[str]) -> int:
    text = DOCUMENT.read_text(encoding="utf-8")
    fresh = with_flag_table(text)
    if "--check" in argv:
        if fresh != text:
            print(f"{DOCUMENT.relative_to(ROOT)}: the flag table is stale; run python scripts/update_flag_table.py")
            return 1
        return 0
    if fresh != text:
        DOCUMENT.write_text(fresh, encoding="utf-8")
        print(f"rewrote the flag table of {DOCUMENT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

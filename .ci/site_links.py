"""After `mkdocs build`: every page and figure the README links to under docs/ is in the built site.

mkdocs --strict already fails on a link to a missing page inside the site; this also catches a
README link that the guide's rewrite (`](docs/` -> `](`) or the nav would leave out.
"""
import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
site = root / "site"
targets = sorted(set(re.findall(r"\]\(docs/([^)#\s]+)", (root / "README.md").read_text())))
missing = []
for target in targets:
    built = site / (target[:-3] + "/index.html" if target.endswith(".md") else target)
    if not built.is_file():
        missing.append(f"docs/{target} -> {built.relative_to(root)}")
if missing:
    sys.exit("README links missing from the site:\n  " + "\n  ".join(missing))
print(f"site: all {len(targets)} README links under docs/ are built")

"""The README's explorer screenshots, taken in headless Chromium from built pages.

    python benchmarks/explorer_screenshots.py results/modadd_seed3/explorer/index.html \\
        docs/explorer.png --view path
    python benchmarks/explorer_screenshots.py results/induction_lm/explorer/index.html \\
        docs/explorer_lm.png --view modules

``path``: LIB's path mode between the two most important non-constant features of the
largest module in the first layer of the graph and the two in the last (pins in the address, as a
user would share them). ``modules``: LIB's module view with the largest module of the
second layer opened. The PNG is reduced to 256 colours to stay small.
"""

import argparse
import shutil
import sys
from pathlib import Path

PICK = {
    "path": """() => {
      const d = window.ib.store()[0].data;
      const size = new Map();
      d.module.forEach((c) => { if (c >= 0) size.set(c, (size.get(c) ?? 0) + 1); });
      const big = [...size.entries()].sort((a, b) => b[1] - a[1])[0][0];
      const layers = [...new Set(d.layer)];
      const best = (layer) => d.key.map((k, i) => i)
        .filter((i) => d.layer[i] === layer && d.module[i] === big && d.index[i] > 0)
        .sort((a, b) => d.importance[b] - d.importance[a]).slice(0, 2).map((i) => d.key[i]);
      return 'm=lib&pins=' + [...best(layers[0]), ...best(layers[layers.length - 1])].join(',');
    }""",
    "modules": """() => {
      const m = window.ib.store()[2].data;
      const layers = [...new Set(m.layer)];
      const layer = layers[Math.min(1, layers.length - 1)];
      let row = -1;
      m.layer.forEach((l, i) => {
        if (l === layer && m.module[i] >= 0 && (row < 0 || m.count[i] > m.count[row])) row = i;
      });
      return 'm=lib&v=modules&open=' + m.key[row];
    }""",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--view", choices=sorted(PICK), required=True)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    chromium = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    if chromium is None:
        sys.exit("no Chromium found (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(
            offline=True, viewport={"width": args.width, "height": args.height}
        )
        page = context.new_page()
        page.goto(args.page.resolve().as_uri())
        page.wait_for_function("() => window.ib && window.ib.cardsReady", timeout=120_000)
        view = page.evaluate(PICK[args.view])
        page.evaluate(f"() => {{ window.location.hash = '{view}'; window.ib.readHash(); }}")
        page.wait_for_timeout(1500)
        raw = args.png.with_suffix(".raw.png")
        page.screenshot(path=str(raw))
        browser.close()
    Image.open(raw).convert("RGB").quantize(256).save(args.png, optimize=True)
    raw.unlink()
    print(f"{args.png}: {view}, {args.png.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()

"""What does each perceptual network ask a sketch to be? Strokes fitted to it directly.

    nice -n 10 python benchmarks/perceptual_fit.py --output docs/figures/perceptual-fit.png

For the same ``shapes`` validation images, 20 strokes per image start spread over the
canvas and are optimised by Adam against one perceptual network at a time (no game, no
sender: the loss alone), then the shipped recogniser names the class of each fitted
sketch. The figure has one row of images, one row of their line drawings and one row of
fitted sketches per network; the table gives the final loss and the recognisability of
the fitted sketches. It is how the default ``--perceptual-net`` was chosen, beside the
self-play runs in the README: a network whose own optimum is not a readable drawing
cannot teach a sender to make one.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.utils import save_image

from agents.backbones import make_backbone
from agents.config import default_sigma2
from agents.edges import DrawingNet, EdgeNet, line_drawing
from agents.losses import perceptual_loss
from agents.perceptual import default_tap_weights
from agents.recognise import Recogniser
from sketchenv.datasets import make_dataset
from sketchenv.raster import render_strokes, to_rgb


def fit(net, images: torch.Tensor, weights: list[float], steps: int, sigma2: float) -> torch.Tensor:
    """Strokes ``[N, 20, 4]`` fitted to ``images`` under ``net``'s perceptual loss."""
    size = images.shape[-1]
    generator = torch.Generator().manual_seed(0)
    strokes = (torch.rand(len(images), 20, 4, generator=generator) * 1.6 - 0.8).requires_grad_()
    optimizer = torch.optim.Adam([strokes], lr=0.02)
    for _ in range(steps):
        sketches = to_rgb(render_strokes(strokes.clamp(-1, 1), size, sigma2=sigma2))
        loss = perceptual_loss(net, images, sketches, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return strokes.detach().clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image size (a shipped one)")
    parser.add_argument("--images", type=int, default=48, help="validation images fitted")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps per fit")
    parser.add_argument("--output", default="perceptual-fit.png", help="figure (PNG)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = make_dataset("shapes", "val", image_size=args.size)
    images = data.images(torch.arange(args.images)).float()
    labels = torch.as_tensor(data.labels[: args.images])
    sigma2 = default_sigma2(args.size)
    recogniser = Recogniser(f"shapes-recogniser-{args.size}", (args.size, args.size), data.classes)
    nets = {
        "drawing": DrawingNet(),
        "edges": EdgeNet(),
        f"shapes-supervised-{args.size}": make_backbone(
            "small", f"shapes-supervised-{args.size}", image_size=args.size
        ),
    }
    rows = [images[:12], line_drawing(images[:12])]
    print(f"{args.images} images at {args.size} px, {args.steps} Adam steps per fit")
    print(f"{'perceptual network':<24} {'final loss':>10} {'recognised':>11} {'seconds':>8}")
    with torch.no_grad():
        base = (recogniser(line_drawing(images)) == labels).float().mean().item()
    print(f"{'(line drawings)':<24} {'':>10} {base:>11.3f} {'':>8}")
    for name, net in nets.items():
        net.requires_grad_(False).eval()
        weights = default_tap_weights(net)
        start = time.perf_counter()
        strokes = fit(net, images, weights, args.steps, sigma2)
        seconds = time.perf_counter() - start
        sketches = to_rgb(render_strokes(strokes, args.size, sigma2=sigma2))
        with torch.no_grad():
            loss = perceptual_loss(net, images, sketches, weights).item()
            recognised = (recogniser(sketches) == labels).float().mean().item()
        print(f"{name:<24} {loss:>10.4f} {recognised:>11.3f} {seconds:>8.1f}")
        rows.append(sketches[:12])
    save_image(torch.cat(rows), args.output, nrow=12, padding=2, pad_value=0.6)
    print(f"rows: images, line drawings, then {', '.join(nets)}; wrote {args.output}")


if __name__ == "__main__":
    main()

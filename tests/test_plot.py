"""The animation must work offline: no stylesheet or script fetched from the network."""

import re

import numpy as np

from fm_helpers.plot import animate


def test_animation_needs_no_network():
    trajectory = np.random.default_rng(0).normal(size=(4, 20, 2))
    html = animate(trajectory, np.linspace(0.0, 1.0, 4))
    assert "<img" in html and "Animation(" in html, "the player is still there"
    remote = re.findall(r'(?:href|src)="(https?://[^"]+)"', html)
    assert not remote, f"the animation loads {remote}"
    assert 'class="fa' not in html, "buttons still use Font Awesome icons"

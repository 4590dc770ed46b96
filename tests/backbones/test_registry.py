"""The backbone registry: the one string lookup in medssl, strict about names and options."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medssl.backbones import Backbone, create_backbone, list_backbones, register_backbone, registry


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))


def test_builtin_families_are_registered_in_2d_and_3d() -> None:
    names = list_backbones()
    assert names == sorted(names)
    for family in ("swin", "vit", "resenc"):
        assert f"{family}3d" in names and f"{family}2d" in names


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'swin4d'; known: .*swin3d"):
        create_backbone("swin4d")


def test_unknown_option_is_named() -> None:
    with pytest.raises(TypeError, match=r"'featur_size'.*accepted: size"):
        create_backbone("swin3d", featur_size=48)


def test_bad_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="swin size 'xl' unknown"):
        create_backbone("swin3d", size="xl")


def test_factories_with_catch_all_kwargs_or_duplicate_names_are_refused(
    scratch_registry: None,
) -> None:
    with pytest.raises(TypeError, match="must not take"):

        @register_backbone("loose")
        def loose(**options: object) -> Backbone:
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        register_backbone("swin3d")(lambda: None)


def test_a_registered_factory_is_listed_and_built(scratch_registry: None) -> None:
    class Tiny(Backbone):
        def __init__(self, width: int):
            super().__init__()
            self.spatial_dims, self.in_channels, self.num_features = 2, 1, width
            self.feature_channels, self.feature_strides = [width], [1]
            self.conv = torch.nn.Conv2d(1, width, 1)

        def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [self.conv(x)]

    @register_backbone("tiny2d")
    def tiny2d(width: int = 4) -> Tiny:
        return Tiny(width)

    assert "tiny2d" in list_backbones()
    assert create_backbone("tiny2d", width=3)(torch.zeros(2, 1, 5, 5)).shape == (2, 3)


def test_backbones_import_torch_only() -> None:
    """Model code stays below the data/training layers (DESIGN.md section 2)."""
    code = (
        "import sys, medssl.backbones as b; b.list_backbones();"
        "print(sorted(m for m in ('lightning', 'monai', 'nibabel', 'pydicom') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

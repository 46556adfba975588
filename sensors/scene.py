"""Scene: dataset images → linear light → mean photons per sensor pixel per exposure.

The dataset's pixel values are decoded to linear relative radiance (inverse sRGB
transfer for sRGB-coded images), then scaled to the mean number of photons that
reach one sensor pixel, per colour channel, during one exposure. The photon level
is set in one of three ways:

* ``mean_photons`` (the default, 1000): an ideal averaging auto-exposure. Each image
  is scaled so that its mean over all pixels and channels is ``mean_photons``. The
  average sensor pixel then receives ``mean_photons`` photons; the relative brightness
  of different images is not kept.
* ``photons_at_white``: a fixed exposure. A linear value of 1.0 (diffuse white)
  gives ``photons_at_white`` photons per sensor pixel per channel; darker images
  get fewer photons.
* ``illuminance_lux`` with ``exposure_s``, ``f_number`` and ``pixel_pitch_um``: the
  fixed exposure ``photons_at_white`` is computed from the camera equation
  (:func:`photons_from_illuminance`).

Each channel's value is the photon count in that channel's band: a white pixel
sends the same photon count in R, G and B. In lux mode the camera equation gives the
photons of all the light; ``band_fractions`` (default a third each) shares them among
the R, G and B bands, so R + G + B is what the camera equation allows.

A gray scene (``channels: gray``) gives one plane instead of three: the photons of all
the light, R + G + B of the RGB scene (a grey input image's ``g`` gives ``3·g`` times one
channel's level; a colour image the sum of its three channels, in lux mode weighted by
``band_fractions``), for a panchromatic ``mono`` photodetector, which then collects the
same mean photons as from the three RGB planes, at a third of the optics' and the
photodetector's cost. ``mean_photons`` fixes the mean of that plane divided by 3 (the
mean per RGB channel, as in spectral mode); its one wavelength (for the optics' Airy
PSF) is ``photon_wavelength_nm``.

Spectral scenes (``spectral``, default ``off``: the three RGB channels above) give
photons per band on a wavelength grid (``band_range_nm``, default 400–700 nm in 10 nm
steps, or ``bands_nm``), (N, H, W, B), with the ``spectral`` attr set:

* ``recover``: each pixel's linear RGB becomes a reflectance spectrum by colour's
  ``recovery`` method (:mod:`sensors.spectra`), lit by ``illuminant``;
* ``colorchecker``: a 4 × 6 chart of colour's ColorChecker reflectances (``chart``),
  ``chart_patch_px`` per patch side, under ``illuminant``, for every dataset image;
* ``cube``: a user's hyperspectral cube file (:mod:`sensors.cube`) under ``illuminant``.

The light is the same as the RGB scene's: a white surface sends ``3 ×`` the photons of
one RGB channel over all bands (the three channels' worth), shared among the bands by
the illuminant's photon spectrum; ``mean_photons`` likewise fixes each image's mean of
``Σ_b photons / 3`` per pixel. Under ``flat_photons`` on the three RGB wavelengths a
grey image gives the RGB scene's photons in each band.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

import numpy as np

from pipeline.stage import Batch, SignalInfo, Stage, StageError, StageParams, Unit, param
from sensors import spectra
from sensors.colour import srgb_to_linear
from sensors.cube import open_cube
from sensors.spectral import DEFAULT_BAND_RANGE_NM, band_grid, check_bands

__all__ = [
    "PLANCK_J_S",
    "SPEED_OF_LIGHT_M_PER_S",
    "SceneStage",
    "decode_image",
    "photons_from_illuminance",
    "upsample_photons",
]

PLANCK_J_S = 6.62607015e-34  # exact (SI 2019)
SPEED_OF_LIGHT_M_PER_S = 299_792_458.0  # exact
MAX_LUMINOUS_EFFICACY_LM_PER_W = 683.0
_T = TypeVar("_T")  # at 555 nm (540 THz), by definition of the candela

_ENCODING_OF_ATTR = {"srgb8": "srgb", "linear16": "linear", "float": "linear"}
_INTEGER_FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def decode_image(
    image: np.ndarray, *, encoding: Literal["srgb", "linear"], dtype: type = np.float32
) -> np.ndarray:
    """Dataset pixel values → linear relative radiance (1.0 = diffuse white).

    Parameters
    ----------
    image : integer (uint8, uint16) or float array of any shape. Integer images are
        divided by their dtype's full scale (255 or 65535); float images are taken as
        already in [0, 1].
    encoding : ``"srgb"`` applies the inverse sRGB transfer after scaling;
        ``"linear"`` applies none.
    dtype : the float dtype of the result.

    Returns
    -------
    Linear values in [0, 1] (for in-range input), ``dtype``.
    """
    image = np.asarray(image)
    full_scale = _INTEGER_FULL_SCALE.get(image.dtype)
    if full_scale is not None:
        # A 256- or 65536-entry lookup table: exact and faster than the formula.
        codes = np.arange(int(full_scale) + 1, dtype=np.float64) / full_scale
        lut = srgb_to_linear(codes) if encoding == "srgb" else codes
        return lut.astype(dtype)[image]
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float")
    values = np.array(image, dtype=dtype)  # a copy: callers may scale it in place
    return srgb_to_linear(values) if encoding == "srgb" else values


def photons_from_illuminance(
    illuminance_lux: float,
    *,
    exposure_s: float,
    f_number: float,
    pixel_pitch_um: float,
    reflectance: float = 1.0,
    lens_transmission: float = 1.0,
    luminous_efficacy_lm_per_w: float = MAX_LUMINOUS_EFFICACY_LM_PER_W,
    photon_wavelength_nm: float = 555.0,
) -> float:
    """Mean photons per pixel per exposure from a Lambertian scene under given illuminance.

    The camera equation for an object far away (magnification ≪ 1), on axis, gives the
    image-plane illuminance

        E_img = E_scene · R · T / (4 N²)       [lx]

    for a Lambertian surface of reflectance R lit by E_scene (its luminance is
    E_scene·R/π), through a lens of transmission T and f-number N. Illuminance is
    converted to irradiance with the luminous efficacy K (683 lm/W for 555 nm light;
    broadband white light has a lower K and so more photons per lux), and to a photon
    count with the photon energy h·c/λ (EMVA 1288, eq. 1: μp = A·E·t / (h·ν)):

        μp = E_img / K · A · t · λ / (h·c),   A = pixel_pitch²

    Parameters
    ----------
    illuminance_lux : scene illuminance E_scene, lx.
    exposure_s : exposure time t, s.
    f_number : the lens's f-number N.
    pixel_pitch_um : pixel pitch, µm (the pixel's area is its square; the fill factor
        and quantum efficiency belong to the photodetector).
    reflectance : R, the reflectance of the surface that a linear value of 1.0 shows.
    lens_transmission : T, the lens's transmittance.
    luminous_efficacy_lm_per_w : K, lm/W.
    photon_wavelength_nm : λ, the wavelength whose photon energy is used, nm.

    Returns
    -------
    Photons per pixel per exposure for a surface of reflectance ``reflectance``.

    References
    ----------
    EMVA Standard 1288, Release 4.0 (2021), section 2.1, eq. (1).
    B. Jähne, Digital Image Processing, 6th ed., Springer 2005, section 6.5 (the
    radiometry of imaging: image irradiance E' = π·L·T/(4 N²) for object distance ≫ f).
    """
    image_lux = illuminance_lux * reflectance * lens_transmission / (4.0 * f_number**2)
    irradiance_w_per_m2 = image_lux / luminous_efficacy_lm_per_w
    photon_energy_j = PLANCK_J_S * SPEED_OF_LIGHT_M_PER_S / (photon_wavelength_nm * 1e-9)
    area_m2 = (pixel_pitch_um * 1e-6) ** 2
    return float(irradiance_w_per_m2 * area_m2 * exposure_s / photon_energy_j)


def upsample_photons(photons: np.ndarray, factor: int) -> np.ndarray:
    """Spread each image pixel's photons evenly over ``factor × factor`` sensor pixels.

    Area-preserving (box) upsampling of (N, H, W, C) planes: every sensor pixel gets
    ``1/factor²`` of its image pixel's photons, so the total is conserved.

    Returns
    -------
    (N, H·factor, W·factor, C) array, same dtype.
    """
    if factor == 1:
        return photons
    out = np.repeat(np.repeat(photons, factor, axis=1), factor, axis=2)
    out *= np.asarray(1.0 / factor**2, dtype=out.dtype)
    return out


#: Parameters that only a spectral scene reads.
_SPECTRAL_KEYS = (
    "recovery",
    "illuminant",
    "band_range_nm",
    "bands_nm",
    "chart",
    "chart_patch_px",
    "cube_path",
    "cube_wavelengths_nm",
)

# The most photons per sensor pixel and channel a scene may give: far above any pixel's
# full well (1e4–1e6 e-), far below float32's range (3.4e38) after any later gain.
MAX_PHOTONS_PER_PX = 1e12


class SceneStage(Stage):
    """Dataset images → linear photons per sensor pixel per exposure, (N, H, W, 3) float32
    (``channels: gray``: (N, H, W, 1); spectral: (N, H, W, B))."""

    name = "scene"
    kind = "scene"
    takes = (Unit.IMAGE,)
    gives = Unit.PHOTONS

    class Params(StageParams):
        encoding: Literal["auto", "srgb", "linear"] = param(
            "auto",
            doc="How image values are coded: auto reads the dataset's encoding attribute "
            "(srgb8 → srgb, linear16/float → linear).",
        )
        mean_photons: float | None = param(
            None,
            unit="photons",
            doc="Auto-exposure: scale each image so the mean photons per sensor pixel and "
            "channel is this (the default, 1000, when no other level is set).",
            gt=0,
        )
        photons_at_white: float | None = param(
            None,
            unit="photons",
            doc="Fixed exposure: photons per sensor pixel per channel for a linear value of 1.0.",
            gt=0,
        )
        illuminance_lux: float | None = param(
            None,
            unit="lx",
            doc="Fixed exposure from the camera equation: scene illuminance "
            "(needs exposure_s, f_number, pixel_pitch_um).",
            gt=0,
        )
        exposure_s: float | None = param(
            None,
            unit="s",
            doc="Exposure time: the one value of the chain (lux mode and the "
            "photodetector's dark current read it).",
            gt=0,
        )
        f_number: float | None = param(None, doc="Lens f-number N.", gt=0)
        pixel_pitch_um: float | None = param(None, unit="µm", doc="Sensor pixel pitch.", gt=0)
        reflectance: float = param(
            1.0, doc="Reflectance that a linear value of 1.0 shows (lux mode).", gt=0, le=1
        )
        lens_transmission: float = param(1.0, doc="Lens transmittance (lux mode).", gt=0, le=1)
        luminous_efficacy_lm_per_w: float = param(
            MAX_LUMINOUS_EFFICACY_LM_PER_W,
            unit="lm/W",
            doc="Lux → W/m² conversion (683 for 555 nm light; lower for white light).",
            gt=0,
            le=MAX_LUMINOUS_EFFICACY_LM_PER_W,
        )
        photon_wavelength_nm: float = param(
            555.0, unit="nm", doc="Wavelength whose photon energy converts W to photons/s.", gt=0
        )
        wavelength_nm: tuple[float, float, float] = param(
            (610.0, 550.0, 465.0),
            unit="nm",
            doc="Centre wavelengths of the R, G, B channels (for diffraction in optics).",
        )
        band_fractions: tuple[float, float, float] = param(
            (1 / 3, 1 / 3, 1 / 3),
            doc="Lux mode: share of the light's photons in the R, G and B bands (sum 1).",
        )
        pixels_per_image_pixel: int = param(
            1,
            doc="Sensor pixels per image pixel along each axis (area-preserving upsampling).",
            ge=1,
            le=16,
        )
        channels: Literal["rgb", "gray"] = param(
            "rgb",
            doc="Photon planes: rgb (R, G, B bands) or gray (one plane of all the light, "
            "R + G + B, for a mono photodetector; its wavelength is photon_wavelength_nm).",
        )
        spectral: Literal["off", "recover", "colorchecker", "cube"] = param(
            "off",
            doc="Spectral scene: off (R, G, B channels), recover (RGB → spectrum per pixel), "
            "colorchecker (the 24-patch chart) or cube (a hyperspectral file).",
        )
        recovery: Literal["mallett2019", "smits1999"] = param(
            "mallett2019", doc="spectral: recover: colour-science's RGB → reflectance method."
        )
        illuminant: str = param(
            "D65",
            doc="Spectral: a colour.SDS_ILLUMINANTS name (D65, A, E, FL2, LED-B1, ...) or "
            "flat_photons (equal photons per band).",
        )
        band_range_nm: tuple[float, float, float] = param(
            DEFAULT_BAND_RANGE_NM,
            unit="nm",
            doc="Spectral: band centres from, to (inclusive), step.",
        )
        bands_nm: tuple[float, ...] | None = param(
            None, unit="nm", doc="Spectral: explicit band centres (instead of band_range_nm)."
        )
        chart: str = param(
            "BabelColor Average",
            doc="spectral: colorchecker: a colour.SDS_COLOURCHECKERS data set.",
        )
        chart_patch_px: int = param(
            8, unit="px", doc="spectral: colorchecker: side of one patch.", ge=1, le=256
        )
        cube_path: str | None = param(
            None,
            doc="spectral: cube: .npz (cube, wavelengths_nm) or .npy cube, (H, W, B) or "
            "(N, H, W, B) reflectance.",
            path=True,
        )
        cube_wavelengths_nm: tuple[float, ...] | None = param(
            None, unit="nm", doc="spectral: cube: band centres of a .npy cube."
        )

    DEFAULT_MEAN_PHOTONS = 1000.0

    def setup(self, info: SignalInfo) -> SignalInfo:
        p = self.params
        self._transfer = self._resolve_encoding(info)
        if info.dtype not in _INTEGER_FULL_SCALE and not np.issubdtype(info.dtype, np.floating):
            raise StageError(
                f"scene takes uint8, uint16 or float images, got {info.dtype}", key="encoding"
            )
        if len(info.shape) == 3 and info.shape[2] in (1, 3):
            height, width = info.shape[:2]
        elif len(info.shape) == 2:
            height, width = info.shape
        else:
            raise StageError(
                f"scene takes (H, W, 3) colour or (H, W)/(H, W, 1) grey images, got {info.shape}",
                key="dataset",
            )
        if any(wl <= 0 for wl in p.wavelength_nm):
            raise StageError("wavelengths must be positive", key="wavelength_nm")

        levels = [
            k
            for k in ("mean_photons", "photons_at_white", "illuminance_lux")
            if getattr(p, k) is not None
        ]
        if len(levels) > 1:
            raise StageError(
                f"set only one of mean_photons, photons_at_white, illuminance_lux (got {levels})",
                key=levels[1],
            )
        self._mode = levels[0] if levels else "mean_photons"
        k = p.pixels_per_image_pixel
        if self._mode == "illuminance_lux":
            missing = [
                k for k in ("exposure_s", "f_number", "pixel_pitch_um") if getattr(p, k) is None
            ]
            if missing:  # all of them in one message: one run to get it right
                raise StageError(f"illuminance_lux needs {', '.join(missing)} too", key=missing[0])
            self._photons_per_sensor_px = photons_from_illuminance(
                p.illuminance_lux,
                exposure_s=p.exposure_s,
                f_number=p.f_number,
                pixel_pitch_um=p.pixel_pitch_um,
                reflectance=p.reflectance,
                lens_transmission=p.lens_transmission,
                luminous_efficacy_lm_per_w=p.luminous_efficacy_lm_per_w,
                photon_wavelength_nm=p.photon_wavelength_nm,
            )
            fractions = np.asarray(p.band_fractions, dtype=np.float64)
            if (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
                raise StageError(
                    f"band_fractions must be >= 0 and sum to 1, got {p.band_fractions}",
                    key="band_fractions",
                )
            # per channel: total × fraction; kept as a scalar and a per-band weight
            self._band_weights = (fractions * 3.0).astype(np.float32)
            self._photons_per_sensor_px /= 3.0
        elif self._mode == "photons_at_white":
            self._photons_per_sensor_px = float(p.photons_at_white)
        else:
            self._photons_per_sensor_px = float(p.mean_photons or self.DEFAULT_MEAN_PHOTONS)
        if not self._photons_per_sensor_px <= MAX_PHOTONS_PER_PX:  # also NaN and inf
            raise StageError(
                f"gives {self._photons_per_sensor_px:.3g} photons per pixel, more than "
                f"{MAX_PHOTONS_PER_PX:.0e} (a million times any full well; float32 photon "
                "counts would overflow downstream)",
                key=self._mode,
            )

        attrs: dict[str, object] = {"wavelength_nm": tuple(float(w) for w in p.wavelength_nm)}
        for key in ("exposure_s", "f_number", "pixel_pitch_um"):
            if getattr(p, key) is not None:
                attrs[key] = float(getattr(p, key))
        if self._mode != "mean_photons":
            attrs["photons_at_white"] = self._photons_per_sensor_px
        channels, self._channel_scale = 3, 1.0
        self._recovery = self._chart = self._cube = None
        if p.channels == "gray":
            if p.spectral != "off":
                raise StageError(
                    "a gray scene is one band of all the light; a spectral scene has its "
                    "own bands: use channels: rgb with spectral",
                    key="channels",
                )
            channels, self._channel_scale = 1, 1.0 / 3.0  # the mean of R + G + B, over 3
            attrs["wavelength_nm"] = (float(p.photon_wavelength_nm),)
        if p.spectral == "off":
            self._refuse_spectral_keys()
        else:
            bands, (height, width) = self._setup_spectral(height, width)
            channels, self._channel_scale = len(bands), len(bands) / 3.0
            attrs |= {
                "wavelength_nm": tuple(float(w) for w in bands),
                "spectral": True,
                "illuminant": p.illuminant,
            }
        return info.evolve(
            unit=Unit.PHOTONS,
            shape=(height * k, width * k, channels),
            dtype=np.dtype(np.float32),
            attrs=attrs,
        )

    def _setup_spectral(self, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Band grid, white spectrum and the spectral source; returns (bands, (H, W))."""
        p = self.params
        if p.band_fractions != self.Params.model_fields["band_fractions"].default:
            raise StageError(
                "band_fractions shares light among R, G, B; a spectral scene shares it "
                "among bands by the illuminant",
                key="band_fractions",
            )
        if p.spectral == "cube":
            if p.cube_path is None:
                raise StageError("spectral: cube needs cube_path (.npz or .npy)", key="cube_path")
            for key in ("bands_nm", "band_range_nm"):
                if getattr(p, key) != self.Params.model_fields[key].default:
                    raise StageError("a cube's bands are its wavelengths; drop this", key=key)
            try:
                self._cube = open_cube(p.cube_path, p.cube_wavelengths_nm)
            except ValueError as err:
                raise StageError(str(err), key="cube_path") from None
            bands = self._cube.wavelengths_nm
            height, width = self._cube.image_shape[:2]
        else:
            bands = self._band_grid()
        white = self._spectra_call(spectra.illuminant_photons, "illuminant", p.illuminant, bands)
        if not (white.sum() > 0 and (white >= 0).all()):
            raise StageError(
                f"illuminant {p.illuminant!r} has no light in the bands", key="illuminant"
            )
        # a white surface: the photons of the RGB scene's three channels, shared by band
        self._white = (white * (3.0 / white.sum())).astype(np.float32)
        if p.spectral == "recover":
            self._recovery = self._spectra_call(spectra.recovery, "recovery", p.recovery, bands)
        elif p.spectral == "colorchecker":
            reflectances, _ = self._spectra_call(
                spectra.colourchecker_reflectances, "chart", p.chart, bands
            )
            side = p.chart_patch_px
            chart = reflectances.reshape(4, 6, len(bands)) * self._white
            self._chart = np.repeat(np.repeat(chart, side, axis=0), side, axis=1).astype(np.float32)
            height, width = self._chart.shape[:2]
        return bands, (height, width)

    def _refuse_spectral_keys(self) -> None:
        """StageError for a spectral parameter set while ``spectral`` is off (unused)."""
        p = self.params
        for key in _SPECTRAL_KEYS:
            if getattr(p, key) != self.Params.model_fields[key].default:
                raise StageError(
                    "only read by a spectral scene; set spectral: recover, colorchecker or cube",
                    key=key,
                )

    def _band_grid(self) -> np.ndarray:
        p = self.params
        try:
            if p.bands_nm is not None:
                return check_bands(p.bands_nm)
            return band_grid(*p.band_range_nm)
        except ValueError as err:
            key = "band_range_nm" if p.bands_nm is None else "bands_nm"
            raise StageError(str(err), key=key) from None

    @staticmethod
    def _spectra_call(function: Callable[..., _T], key: str, *args: object) -> _T:
        """``function(*args)`` with its ValueError as a StageError on ``key``."""
        try:
            return function(*args)
        except ValueError as err:
            raise StageError(str(err), key=key) from None

    def _resolve_encoding(self, info: SignalInfo) -> str:
        if self.params.encoding != "auto":
            return self.params.encoding
        coded = info.attrs.get("encoding")
        if coded is None:  # no attribute: infer from the dtype
            return "srgb" if info.dtype == np.uint8 else "linear"
        if coded not in _ENCODING_OF_ATTR:
            raise StageError(
                f"unknown dataset encoding {coded!r}; expected one of "
                f"{sorted(_ENCODING_OF_ATTR)} (or set encoding: srgb|linear)",
                key="encoding",
            )
        return _ENCODING_OF_ATTR[coded]

    def process(self, x: np.ndarray, batch: Batch) -> np.ndarray:
        if self._chart is not None or self._cube is not None:
            linear = self._stored_spectra(batch)  # the dataset's images give only the count
        else:
            if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                raise StageError("image values contain NaN or infinity", key="dataset")
            linear = decode_image(x, encoding=self._transfer)
            if linear.ndim == 3:
                linear = linear[..., None]
            if self.params.channels == "gray":
                linear = self._one_band(linear)
            elif linear.shape[-1] == 1:
                linear = np.repeat(linear, 3, axis=-1)
            if self._recovery is not None:  # reflectance per band × the white's photons
                linear = self._recovery(linear)
                linear *= self._white
        k = self.params.pixels_per_image_pixel
        # Photons per *image* pixel: k² sensor pixels share it after upsampling.
        per_image_px = self._photons_per_sensor_px * k * k
        if self._mode == "mean_photons":
            means = linear.mean(axis=(1, 2, 3), dtype=np.float64)
            if self._channel_scale != 1.0:  # spectral: the mean of Σ_b photons / 3
                means *= self._channel_scale
            scale = np.divide(per_image_px, means, out=np.zeros_like(means), where=means > 0)
            linear *= scale.astype(np.float32)[:, None, None, None]
        else:
            linear *= np.float32(per_image_px)
            lux_rgb = self.params.spectral == "off" and self.params.channels == "rgb"
            if self._mode == "illuminance_lux" and lux_rgb:
                linear *= self._band_weights
        return upsample_photons(linear, k)

    def _one_band(self, linear: np.ndarray) -> np.ndarray:
        """A gray scene's one plane (N, H, W, 1): R + G + B of the linear values (lux mode:
        weighted by 3 × band_fractions), so it holds the three RGB channels' photons."""
        weights = np.ones(3, np.float32)
        if self._mode == "illuminance_lux":
            weights = self._band_weights
        if linear.shape[-1] == 1:  # a grey image: the same value in every band
            return linear * weights.sum(dtype=np.float32)
        band = linear[..., 0] * weights[0]
        band += linear[..., 1] * weights[1]
        band += linear[..., 2] * weights[2]
        return band[..., None]

    def _stored_spectra(self, batch: Batch) -> np.ndarray:
        """The chart, or the cube's scenes, as relative photons per band (n, H, W, B)."""
        if self._chart is not None:
            return np.repeat(self._chart[None], len(batch), axis=0)
        try:
            return self._cube.images(batch.image_index) * self._white
        except ValueError as err:
            raise StageError(str(err), key="cube_path") from None

"""Random crop, flip, affine, elastic, stroke, colour, blur and noise for image batches.

Crop, flip and affine are fused into one per-image 2x3 matrix applied with a
single ``grid_sample`` (an elastic displacement, when asked for, is added to
the same sampling grid); the colour operations into one per-image 3x3 matrix
plus offset; the blur is a separable grouped convolution. No Python loop
runs over images.
"""

import functools
import math

import torch
import torch.nn.functional as F

from .base import Augmentation, _check_batch, _check_generator, _check_range, _rand, _randn

# The elastic displacement is drawn on a coarse grid of this many cells a side
# and interpolated to every pixel: smooth, as a hand's wobble
_ELASTIC_CELLS = 4

# Candidate boxes drawn per image for the random resized crop; the first one
# that fits the image is used, as in torchvision's rejection sampling.
_CROP_TRIALS = 10

# ITU-R 601 luma weights: torchvision's grayscale and the Y row of YIQ.
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = (
    _LUMA,
    (0.596, -0.274, -0.322),
    (0.211, -0.523, 0.312),
)


def _chroma_bases():
    # In YIQ coordinates saturation s and hue angle a act as diag(1, s R(a)),
    # so in RGB the colour matrix is P0 + s cos(a) P1 + s sin(a) P2. The three
    # bases are computed once, in float64.
    yiq = torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)
    inv = torch.linalg.inv(yiq)
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    p0 = inv[:, :1] @ yiq[:1]
    p1 = inv[:, 1:] @ yiq[1:]
    p2 = inv[:, 1:] @ rot @ yiq[1:]
    return torch.stack([p0, p1, p2]).tolist()


_CHROMA_BASES = _chroma_bases()  # (3, 3, 3): P0, P1, P2


@functools.lru_cache(maxsize=16)
def _colour_constants(device, dtype):
    """Luma weights and chroma bases on ``device``, built once per device.

    Building them from Python lists on every call would be a host-to-device
    copy from pageable memory, which synchronises with the GPU.
    """
    luma = torch.tensor(_LUMA, dtype=dtype, device=device)  # (3,)
    bases = torch.tensor(_CHROMA_BASES, dtype=dtype, device=device)  # (3, 3, 3)
    return luma, bases



def _affine_grid(theta, h, w):
    """``F.affine_grid(theta, (N, C, h, w), align_corners=False)`` by broadcasting.

    torch's version multiplies a materialised (N, H*W, 3) base grid by theta,
    which on CPU costs several times the resampling itself; here the only
    full-size operation is one addition.
    """
    n = theta.shape[0]
    # Pixel centres in normalised units, as affine_grid with align_corners=False.
    xs = torch.arange(w, device=theta.device, dtype=theta.dtype)
    xs = (2 * xs + 1) / w - 1  # (W,)
    ys = torch.arange(h, device=theta.device, dtype=theta.dtype)
    ys = (2 * ys + 1) / h - 1  # (H,)
    # Last two axes: rows x weight, y weight, offset; columns grid x, grid y.
    t = theta.transpose(1, 2).reshape(n, 1, 1, 3, 2)
    along_x = t[..., 0, :] * xs.view(1, 1, w, 1)  # (N, 1, W, 2)
    along_y = t[..., 1, :] * ys.view(1, h, 1, 1) + t[..., 2, :]  # (N, H, 1, 2)
    return along_x + along_y  # (N, H, W, 2)


class ImageAugmentation(Augmentation):
    """Random crop, flip, affine, elastic, stroke, colour, blur and noise for image batches.

    Each image of the batch draws its own parameters. Operations run in this
    order: random resized crop, horizontal flip, affine and elastic
    displacement (one resampling), stroke thickness, brightness, contrast, saturation and hue (together with probability
    ``jitter_p``), grayscale, blur, noise; the output is clamped to [0, 1].

    Parameters
    ----------
    crop_scale : tuple of float or None, default=(0.2, 1.0)
        Range of the crop area as a fraction of the image area. The crop is
        resized back to the input size. None disables cropping.
    crop_ratio : tuple of float, default=(3/4, 4/3)
        Range of the crop aspect ratio (width / height), sampled log-uniformly.
    flip : bool, default=True
        Flip each image horizontally with probability 0.5.
    rotation : float, default=0.0
        Rotation angle drawn uniformly in ``[-rotation, rotation]`` degrees.
    translate : float or tuple of float, default=0.0
        Largest shift as a fraction of the image width (and height, if a pair
        ``(horizontal, vertical)`` is given); shifts are uniform.
    shear : float, default=0.0
        Horizontal shear (slant) angle drawn uniformly in ``[-shear, shear]``
        degrees, below 90.
    elastic : float, default=0.0
        Standard deviation, in pixels, of a smooth random displacement of the
        image (an elastic deformation, as handwriting varies): drawn
        independently at the corners of a 4x4 grid of cells and interpolated
        bicubically to every pixel. 0 disables it.
    thickness : float, default=0.0
        Probability that an image's strokes get thicker or thinner (each
        half the time): the image is blended, with a weight uniform in
        [0, 1], with its 3x3 grey-level dilation or erosion. Thin strokes
        lose contrast rather than vanish. 0 disables it.
    color_jitter : tuple of float or None, default=(0.4, 0.4, 0.4, 0.1)
        ``(brightness, contrast, saturation, hue)`` strengths with
        torchvision's meaning: factors uniform in ``[max(0, 1 - s), 1 + s]``,
        hue shift uniform in ``[-hue, hue]`` of a full turn (hue <= 0.5).
        None disables colour jitter.
    jitter_p : float, default=0.8
        Probability that an image is colour-jittered.
    grayscale_p : float, default=0.2
        Probability that an image is converted to grayscale (kept 3 channels).
    blur_p : float, default=0.5
        Probability that an image is blurred, when ``blur`` is True.
    blur_sigma : tuple of float, default=(0.1, 2.0)
        Range of the blur standard deviation in pixels.
    blur : bool, default=False
        Enable Gaussian blur. The kernel side is about 10 % of the image side,
        odd.
    noise_std : float, default=0.0
        Standard deviation of additive Gaussian noise (0 disables it).
    padding_mode : {"zeros", "border", "reflection"}, default="zeros"
        Value of pixels sampled outside the image (only rotation and
        translation can reach them).

    See Also
    --------
    rgb_augmentation : The CueCo recipe for RGB images.
    grayscale_augmentation : The recipe for small grayscale images.

    Notes
    -----
    Colour operations follow the image's channel count: saturation, hue and
    grayscale need 3 (RGB) channels and are skipped for any other count;
    brightness and contrast apply to every count.

    Differences from torchvision, chosen to keep everything batched and
    cheap: the jitter order is fixed (brightness, contrast, saturation, hue)
    rather than random per call; hue is a rotation of the chroma plane in YIQ
    space rather than a shift in HSV space; jitter and grayscale are fused
    into one affine colour map per image, so values are clamped to [0, 1]
    once, at the end, rather than after each step; crop boxes are continuous
    rather than rounded to whole pixels.

    Examples
    --------
    >>> import torch
    >>> aug = ImageAugmentation(blur=True)
    >>> x = torch.rand(8, 3, 32, 32)
    >>> aug(x, torch.Generator().manual_seed(0)).shape
    torch.Size([8, 3, 32, 32])
    """

    def __init__(
        self,
        crop_scale=(0.2, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip=True,
        rotation=0.0,
        translate=0.0,
        shear=0.0,
        elastic=0.0,
        thickness=0.0,
        color_jitter=(0.4, 0.4, 0.4, 0.1),
        jitter_p=0.8,
        grayscale_p=0.2,
        blur_p=0.5,
        blur_sigma=(0.1, 2.0),
        blur=False,
        noise_std=0.0,
        padding_mode="zeros",
    ):
        if crop_scale is not None:
            _check_range("crop_scale", crop_scale, 0.0, 1.0, ordered_pair=True)
            if crop_scale[0] <= 0:
                raise ValueError(f"crop_scale must be positive, got {crop_scale!r}.")
        _check_range("crop_ratio", crop_ratio, ordered_pair=True, positive=True)
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be a bool, got {flip!r}.")
        _check_range("rotation", rotation, 0.0, 180.0)
        if isinstance(translate, (tuple, list)):
            if len(translate) != 2:
                raise ValueError(
                    f"translate must be a float or a pair, got {translate!r}."
                )
            for t in translate:
                _check_range("translate", t, 0.0, 1.0)
        else:
            _check_range("translate", translate, 0.0, 1.0)
        _check_range("shear", shear, 0.0, 89.0)
        _check_range("elastic", elastic, 0.0)
        _check_range("thickness", thickness, 0.0, 1.0)
        if color_jitter is not None:
            if not isinstance(color_jitter, (tuple, list)) or len(color_jitter) != 4:
                raise ValueError(
                    "color_jitter must be None or (brightness, contrast, saturation, "
                    f"hue), got {color_jitter!r}."
                )
            for v in color_jitter[:3]:
                _check_range("color_jitter", v, 0.0)
            _check_range("color_jitter hue", color_jitter[3], 0.0, 0.5)
        for name, p in (
            ("jitter_p", jitter_p),
            ("grayscale_p", grayscale_p),
            ("blur_p", blur_p),
        ):
            _check_range(name, p, 0.0, 1.0)
        _check_range("blur_sigma", blur_sigma, ordered_pair=True, positive=True)
        if not isinstance(blur, bool):
            raise ValueError(f"blur must be a bool, got {blur!r}.")
        _check_range("noise_std", noise_std, 0.0)
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(
                "padding_mode must be 'zeros', 'border' or 'reflection', "
                f"got {padding_mode!r}."
            )
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.flip = flip
        self.rotation = rotation
        self.translate = translate
        self.shear = shear
        self.elastic = elastic
        self.thickness = thickness
        self.color_jitter = color_jitter
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p
        self.blur_p = blur_p
        self.blur_sigma = blur_sigma
        self.blur = blur
        self.noise_std = noise_std
        self.padding_mode = padding_mode

    # -- which operations run -------------------------------------------------

    def _translate_pair(self):
        if isinstance(self.translate, (tuple, list)):
            return float(self.translate[0]), float(self.translate[1])
        return float(self.translate), float(self.translate)

    def _plan(self, n_channels):
        """Number of uniforms each enabled operation needs, in draw order."""
        jitter = self.color_jitter if self.color_jitter is not None else (0, 0, 0, 0)
        if n_channels != 3:
            jitter = (jitter[0], jitter[1], 0, 0)
        use_jitter = self.jitter_p > 0 and any(v > 0 for v in jitter)
        return {
            "crop": 2 * _CROP_TRIALS + 2 if self.crop_scale is not None else 0,
            "flip": 1 if self.flip else 0,
            "rotation": 1 if self.rotation > 0 else 0,
            "translate": 2 if any(t > 0 for t in self._translate_pair()) else 0,
            "jitter": 5 if use_jitter else 0,
            "grayscale": 1 if n_channels == 3 and self.grayscale_p > 0 else 0,
            "blur": 2 if self.blur and self.blur_p > 0 else 0,
            # drawn last, so that a recipe without them draws as before
            "shear": 1 if self.shear > 0 else 0,
            "thickness": 3 if self.thickness > 0 else 0,
        }, jitter

    def __call__(self, x, generator=None):
        """Return one random view of every image.

        Parameters
        ----------
        x : Tensor of shape (n_samples, n_channels, height, width)
            Float images in [0, 1], on any device. Not modified.
        generator : torch.Generator or None, default=None
            Source of all random draws. None uses a fresh, non-deterministically
            seeded generator.

        Returns
        -------
        views : Tensor of shape (n_samples, n_channels, height, width)
            Augmented images in [0, 1], same dtype and device as ``x``.
        """
        _check_batch(x, 4, "ImageAugmentation")
        generator = _check_generator(generator)
        n, c, h, w = x.shape
        if n == 0:
            return x.clone()
        plan, jitter = self._plan(c)
        draws = _rand(generator, (n, sum(plan.values())), x.device)  # (N, n_draws)
        u, start = {}, 0
        for key, k in plan.items():
            u[key] = draws[:, start : start + k]
            start += k

        y = x
        if (plan["crop"] or plan["flip"] or plan["rotation"] or plan["translate"]
                or plan["shear"] or self.elastic > 0):
            theta = self._geometry(u, n, h, w).to(x.dtype)  # (N, 2, 3)
            grid = _affine_grid(theta, h, w)  # (N, H, W, 2)
            if self.elastic > 0:
                grid = grid + self._displacement(generator, n, h, w, x)
            y = F.grid_sample(
                x,
                grid,
                mode="bilinear",
                padding_mode=self.padding_mode,
                align_corners=False,
            )
        if plan["thickness"]:
            y = self._stroke(y, u["thickness"])
        if plan["jitter"] or plan["grayscale"]:
            y = self._color(y, u["jitter"], u["grayscale"], jitter)
        if plan["blur"]:
            y = self._blur(y, u["blur"])
        if self.noise_std > 0:
            y = y + self.noise_std * _randn(generator, y.shape, x.device).to(x.dtype)
        # In place only on a tensor of our own: y is still x when nothing ran.
        return y.clamp(0.0, 1.0) if y is x else y.clamp_(0.0, 1.0)

    # -- operations -----------------------------------------------------------

    def _geometry(self, u, n, h, w):
        """Per-image 2x3 maps from output to input normalised coordinates.

        The view is affine(flip(crop(x))); grid_sample needs the inverse map,
        so the inverses are composed in reverse order: output point q ->
        undo affine -> undo flip -> position inside the crop box.
        """
        device = u["crop"].device  # every slice of the draws is on x.device
        one = torch.ones(n, device=device)
        zero = torch.zeros(n, device=device)

        # Crop box: half-sizes and centre in normalised units (the image
        # spans [-1, 1]); the whole image unless a crop is drawn.
        cw, ch, cx, cy = one, one, zero, zero
        if u["crop"].shape[1]:
            cw, ch, cx, cy = self._crop_boxes(u["crop"], h, w)

        f = one
        if u["flip"].shape[1]:
            f = torch.where(u["flip"][:, 0] < 0.5, -one, one)

        cos, sin = one, zero
        if u["rotation"].shape[1]:
            angle = math.radians(self.rotation) * (2 * u["rotation"][:, 0] - 1)
            cos, sin = torch.cos(angle), torch.sin(angle)
        tx, ty = zero, zero
        if u["translate"].shape[1]:
            max_x, max_y = self._translate_pair()
            # A shift of a fraction t of the side is 2t in normalised units.
            tx = 2 * max_x * (2 * u["translate"][:, 0] - 1)
            ty = 2 * max_y * (2 * u["translate"][:, 1] - 1)

        # Inverse rotation in pixel space, expressed in normalised coordinates
        # (S^-1 R(-angle) S with S = diag(W, H) / 2) so non-square images
        # rotate without shearing.
        l00, l01 = cos, sin * (h / w)
        l10, l11 = -sin * (w / h), cos
        if u["shear"].shape[1]:
            # then the inverse of a horizontal shear x' = x + k y (pixel units)
            k = torch.tan(math.radians(self.shear) * (2 * u["shear"][:, 0] - 1)) * (h / w)
            l00, l01 = l00 - k * l10, l01 - k * l11
        # A = diag(cw * f, ch) @ L and b = c - A @ t.
        a00, a01 = cw * f * l00, cw * f * l01
        a10, a11 = ch * l10, ch * l11
        b0 = cx - (a00 * tx + a01 * ty)
        b1 = cy - (a10 * tx + a11 * ty)
        return torch.stack([a00, a01, b0, a10, a11, b1], dim=1).view(n, 2, 3)

    def _displacement(self, generator, n, h, w, x):
        """Smooth random offsets of the sampling grid, ``(N, H, W, 2)`` normalised units."""
        cells = _randn(generator, (n, 2, _ELASTIC_CELLS + 1, _ELASTIC_CELLS + 1), x.device)
        field = F.interpolate(cells.to(x.dtype), size=(h, w), mode="bicubic", align_corners=True)
        # pixels to normalised units: the image spans 2 over its side
        scale = torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device)
        return field.permute(0, 2, 3, 1) * (self.elastic * scale)

    def _stroke(self, y, u):
        """Blend each chosen image with its grey-level dilation or erosion."""
        chosen = u[:, 0] < self.thickness
        weight = torch.where(chosen, u[:, 2], torch.zeros_like(u[:, 2])).to(y.dtype)
        dilate = (u[:, 1] < 0.5).view(-1, 1, 1, 1)
        grown = F.max_pool2d(y, 3, stride=1, padding=1)
        shrunk = -F.max_pool2d(-y, 3, stride=1, padding=1)
        target = torch.where(dilate, grown, shrunk)
        return torch.lerp(y, target, weight.view(-1, 1, 1, 1))

    def _crop_boxes(self, u, h, w):
        """Vectorised torchvision RandomResizedCrop box sampling.

        Returns the half-width, half-height and centre of each crop box in
        normalised units, all of shape (N,).
        """
        t = _CROP_TRIALS
        s0, s1 = self.crop_scale
        r0, r1 = self.crop_ratio
        area = s0 + (s1 - s0) * u[:, :t]  # fraction of the image area, (N, T)
        log_r0, log_r1 = math.log(r0), math.log(r1)
        ratio = torch.exp(log_r0 + (log_r1 - log_r0) * u[:, t : 2 * t])  # (N, T)
        # Crop sides as fractions of the image sides: w_px = sqrt(a H W r).
        cw = torch.sqrt(area * ratio * (h / w))
        ch = torch.sqrt(area / ratio * (w / h))
        fits = (cw <= 1) & (ch <= 1)  # (N, T)
        first = fits.to(cw.dtype).argmax(dim=1, keepdim=True)  # first fitting trial
        cw = cw.gather(1, first).squeeze(1)  # (N,)
        ch = ch.gather(1, first).squeeze(1)
        # No trial fits: torchvision's fallback, the largest central box whose
        # ratio is clipped to crop_ratio.
        in_ratio = w / h
        fw, fh = 1.0, 1.0
        if in_ratio < r0:
            fh = in_ratio / r0
        elif in_ratio > r1:
            fw = r1 / in_ratio
        any_fits = fits.any(dim=1)
        cw = torch.where(any_fits, cw, torch.full_like(cw, fw))
        ch = torch.where(any_fits, ch, torch.full_like(ch, fh))
        # Uniform position of a box that stays inside the image.
        cx = (1 - cw) * (2 * u[:, 2 * t] - 1)
        cy = (1 - ch) * (2 * u[:, 2 * t + 1] - 1)
        return cw, ch, cx, cy

    def _jitter_factor(self, u, strength):
        low = max(0.0, 1.0 - strength)
        return low + (1.0 + strength - low) * u

    def _color(self, y, u_jitter, u_gray, jitter):
        """Colour jitter and grayscale as one per-image affine colour map.

        Brightness ``b`` and contrast ``k`` give ``k b y + (1 - k) b mean``.
        In YIQ space the grayscale image is (Y, 0, 0), so saturation (a blend
        with it) scales the chroma plane (I, Q), a hue shift rotates that
        plane, and both leave gray vectors such as the contrast offset
        unchanged. Grayscale replaces every channel by Y. All of it is one
        3x3 matrix and one offset per image, applied with a single batched
        matmul.
        """
        n, c, h, w = y.shape
        device = y.device
        one = torch.ones(n, device=device)
        scale, offset = one, None
        apply = None
        if u_jitter.shape[1]:
            apply = u_jitter[:, 0] < self.jitter_p  # (N,)
            brightness, contrast = jitter[0], jitter[1]
            if brightness > 0:
                scale = torch.where(
                    apply, self._jitter_factor(u_jitter[:, 1], brightness), 1.0
                )
            if contrast > 0:
                k = torch.where(
                    apply, self._jitter_factor(u_jitter[:, 2], contrast), 1.0
                )
                if c == 3:
                    # Mean of the grayscale image; the mean is linear, so
                    # average each channel first and weight afterwards.
                    luma = _colour_constants(device, y.dtype)[0]
                    mean = (y.mean(dim=(2, 3)) * luma).sum(dim=1)  # (N,)
                else:
                    mean = y.mean(dim=(1, 2, 3))  # (N,)
                offset = (1 - k) * scale * mean.to(k.dtype)  # (N,)
                scale = k * scale

        if c != 3:
            scale = scale.to(y.dtype).view(n, 1, 1, 1)
            if offset is None:
                return y * scale
            return torch.addcmul(offset.to(y.dtype).view(n, 1, 1, 1), y, scale)

        eye = torch.eye(3, device=device).expand(n, 3, 3)
        m = eye
        if apply is not None and (jitter[2] > 0 or jitter[3] > 0):
            p0, p1, p2 = _colour_constants(device, torch.float32)[1]  # 3 x (3, 3)
            s = self._jitter_factor(u_jitter[:, 3], jitter[2]) if jitter[2] > 0 else one
            angle = 2 * math.pi * jitter[3] * (2 * u_jitter[:, 4] - 1)  # (N,)
            cos = (s * torch.cos(angle)).view(n, 1, 1)
            sin = (s * torch.sin(angle)).view(n, 1, 1)
            jittered = p0 + cos * p1 + sin * p2  # (N, 3, 3)
            # An exact identity, not p0 + p1, for images left alone.
            m = torch.where(apply.view(n, 1, 1), jittered, eye)
        if u_gray.shape[1]:
            # Every row the luma weights: identical rows give bitwise equal
            # channels.
            luma = _colour_constants(device, torch.float32)[0].expand(3, 3)
            gray = (u_gray[:, 0] < self.grayscale_p).view(n, 1, 1)
            m = torch.where(gray, luma, m)
        m = (m * scale.view(n, 1, 1)).to(y.dtype)
        flat = y.reshape(n, 3, h * w)
        out = torch.bmm(m, flat)  # (N, 3, H*W)
        if offset is not None:
            out += offset.to(y.dtype).view(n, 1, 1)
        return out.view(n, 3, h, w)

    def _blur(self, y, u):
        """Separable Gaussian blur with one sigma per image (grouped conv)."""
        n, c, h, w = y.shape
        s0, s1 = self.blur_sigma
        sigma = (s0 + (s1 - s0) * u[:, 0]).view(n, 1)  # (N, 1)
        apply = (u[:, 1] < self.blur_p).view(n, 1)

        def kernel(side):
            # About 10 % of the side, odd, and small enough for reflect padding.
            k = max(3, int(0.1 * side))
            k = min(k + 1 - k % 2, 2 * side - 1)
            half = k // 2
            t = torch.arange(-half, half + 1, device=y.device, dtype=sigma.dtype)
            g = torch.exp(-(t**2) / (2 * sigma**2))  # (N, k)
            g = g / g.sum(dim=1, keepdim=True)
            # A delta kernel leaves an unblurred image exactly unchanged and
            # avoids a data-dependent (device-syncing) selection of images.
            g = torch.where(apply, g, (t == 0).to(g.dtype))
            return g.to(y.dtype).repeat_interleave(c, dim=0), half  # (N*C, k)

        kw, half_w = kernel(w)
        kh, half_h = kernel(h)
        # One group per (image, channel). Padding both sides up front: a row
        # blur of reflected rows equals the reflection of blurred rows.
        z = y.reshape(1, n * c, h, w)
        z = F.pad(z, (half_w, half_w, half_h, half_h), mode="reflect")
        # (1, N*C, H + 2 half_h, W + 2 half_w) -> (1, N*C, H + 2 half_h, W)
        z = F.conv2d(z, kw.view(n * c, 1, 1, -1), groups=n * c)
        # -> (1, N*C, H, W)
        z = F.conv2d(z, kh.view(n * c, 1, -1, 1), groups=n * c)
        return z.view(n, c, h, w)


"""Numba kernels of the forward model.

Projected optical path of objects, and the per-depth transfer function with
partial coherence.

Kept apart from :mod:`holography.simulate` so that the physics of one object
(a ray through nested ellipsoids and spheres) can be tested on its own.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.special

# jinc(x) = 2 J1(x) / x on a table, for the spatial-coherence envelope
_JINC_STEP = 0.01
_JINC_X = np.arange(0.0, 80.0, _JINC_STEP)
_JINC = np.ones_like(_JINC_X)
_JINC[1:] = 2.0 * scipy.special.j1(_JINC_X[1:]) / _JINC_X[1:]


@numba.njit(cache=True)
def _chord(dx, dy, a, c):  # pragma: no cover - numba
    s = 1.0 - (dx * dx + dy * dy) / (a * a)
    if s <= 0.0:
        return 0.0
    return 2.0 * c * math.sqrt(s)


@numba.njit(cache=True)
def _ray(px, py, o, parts, lo, hi):  # pragma: no cover - numba
    """OPD (um) and absorption path (um) along a vertical ray at object-local (px, py)."""
    opd = 0.0
    att = 0.0
    lb = _chord(px, py, o["a_um"], o["c_um"])
    opd += o["dn"] * lb
    att += o["kappa"] * lb
    n = 0
    for k in range(o["nlobe"]):
        p = parts[o["lobe0"] + k]
        r2 = p["r"] * p["r"] - (px - p["dx"]) ** 2 - (py - p["dy"]) ** 2
        if r2 > 0.0:
            hl = math.sqrt(r2)
            lo[n] = p["dz"] - hl
            hi[n] = p["dz"] + hl
            n += 1
    if n > 0:
        # insertion sort by start, then merge the union of intervals
        for i in range(1, n):
            a0, b0 = lo[i], hi[i]
            j = i - 1
            while j >= 0 and lo[j] > a0:
                lo[j + 1] = lo[j]
                hi[j + 1] = hi[j]
                j -= 1
            lo[j + 1] = a0
            hi[j + 1] = b0
        total = 0.0
        cs, ce = lo[0], hi[0]
        for i in range(1, n):
            if lo[i] <= ce:
                if hi[i] > ce:
                    ce = hi[i]
            else:
                total += ce - cs
                cs, ce = lo[i], hi[i]
        total += ce - cs
        opd += o["dn_nuc"] * total
        att += o["kappa_nuc"] * total
    for k in range(o["ngran"]):
        p = parts[o["gran0"] + k]
        r2 = p["r"] * p["r"] - (px - p["dx"]) ** 2 - (py - p["dy"]) ** 2
        if r2 > 0.0:
            lg = 2.0 * math.sqrt(r2)
            opd += p["dn"] * lg
            att += p["kappa"] * lg
    return opd, att


@numba.njit(cache=True)
def render_objects(opd, att, objects, parts, idx, cx, cy, mag, x0, y0, pitch, sub):  # pragma: no cover
    """Accumulate projected OPD and absorption path of objects onto a grid.

    ``opd``/``att`` (H, W) float32 are indexed [row, col]; grid pixel (i, j) has
    its centre at (x0 + j * pitch, y0 + i * pitch) in sensor micrometres.
    Object ``idx[k]`` is centred at (cx[k], cy[k]) on the sensor and magnified by
    ``mag[k]``; each grid pixel averages ``sub x sub`` rays.
    """
    ny, nx = opd.shape
    lo = np.empty(16)
    hi = np.empty(16)
    for k in range(idx.size):
        o = objects[idx[k]]
        m = mag[k]
        ext = o["a_um"] * m + pitch
        j0 = max(int(math.floor((cx[k] - ext - x0) / pitch)), 0)
        j1 = min(int(math.ceil((cx[k] + ext - x0) / pitch)) + 1, nx)
        i0 = max(int(math.floor((cy[k] - ext - y0) / pitch)), 0)
        i1 = min(int(math.ceil((cy[k] + ext - y0) / pitch)) + 1, ny)
        w = 1.0 / (sub * sub)
        for i in range(i0, i1):
            for j in range(j0, j1):
                so = 0.0
                sa = 0.0
                for si in range(sub):
                    ys = y0 + (i + (si + 0.5) / sub - 0.5) * pitch
                    for sj in range(sub):
                        xs = x0 + (j + (sj + 0.5) / sub - 0.5) * pitch
                        a, b = _ray((xs - cx[k]) / m, (ys - cy[k]) / m, o, parts, lo, hi)
                        so += a
                        sa += b
                opd[i, j] += so * w
                att[i, j] += sa * w


def radial_transfer(f2_max, n, inv_lambda, thick, index, z_eq, sigma_lambda, blur_d):
    """Layered transfer function with partial-coherence envelopes, tabulated on f^2.

    Returns ``(phase, amplitude)`` on ``n`` equal steps of ``f^2`` in
    ``[0, f2_max]``. The phase is that of the exact layered angular spectrum
    ``2 pi sum_k t_k (sqrt((n_k / lambda)^2 - f^2) - n_k / lambda)`` for layer
    thicknesses ``thick`` (um) and indices ``index`` between the object and the
    sensor; ``z_eq`` is their air-equivalent sum. Temporal coherence (Gaussian
    spectrum of standard deviation ``sigma_lambda`` um) multiplies by
    ``exp(-(pi z_eq f^2 sigma)^2 / 2)``, the paraxial average of
    ``exp(-i pi lambda z f^2)`` over the spectrum; spatial coherence (a source
    disk whose image on the sensor has diameter ``blur_d``) multiplies by
    ``jinc(pi blur_d f)``. Evanescent waves get amplitude 0.
    """
    f2 = np.linspace(0.0, f2_max, n)
    phase = np.zeros(n)
    ok = f2 < (index.min() * inv_lambda) ** 2
    for t, nk in zip(thick, index, strict=True):
        kn = nk * inv_lambda
        phase[ok] += t * (np.sqrt(kn * kn - f2[ok]) - kn)
    phase *= 2.0 * np.pi
    amp = np.exp(-0.5 * (np.pi * z_eq * f2 * sigma_lambda) ** 2)
    x = np.pi * blur_d * np.sqrt(f2)
    amp *= np.interp(x, _JINC_X, _JINC, right=0.0)
    amp[~ok] = 0.0
    return phase, amp


@numba.njit(parallel=True, cache=True)
def accumulate_propagated(acc, spec, pitch, phase, amp, f2_step, f_lim, sx, sy):  # pragma: no cover
    """Acc += spec * amp(f^2) exp(i phase(f^2)) * exp(-2 pi i (fx sx + fy sy)).

    Propagates one depth bin's spectrum with a tabulated isotropic transfer
    function (see :func:`radial_transfer`), band-limited to ``|fx|, |fy| <=
    f_lim`` (Matsushima-Shimobaba), and shifts it laterally by (sx, sy) um.
    """
    ny, nx = acc.shape
    nt = phase.size
    for i in numba.prange(ny):
        fy = (i if i < (ny + 1) // 2 else i - ny) / (ny * pitch)
        if abs(fy) > f_lim:
            continue
        for j in range(nx):
            fx = (j if j < (nx + 1) // 2 else j - nx) / (nx * pitch)
            if abs(fx) > f_lim:
                continue
            x = (fx * fx + fy * fy) / f2_step
            k = int(x)
            if k + 1 >= nt:
                continue
            t = x - k
            a = amp[k] * (1.0 - t) + amp[k + 1] * t
            if a == 0.0:
                continue
            ph = phase[k] * (1.0 - t) + phase[k + 1] * t - 2.0 * math.pi * (fx * sx + fy * sy)
            acc[i, j] += spec[i, j] * complex(a * math.cos(ph), a * math.sin(ph))


@numba.njit(parallel=True, cache=True)
def screen_minus_one(out, opd, att, k0):  # pragma: no cover - numba
    """Out = exp(i k0 opd - k0 att) - 1 (complex64), zero where there is no object."""
    ny, nx = out.shape
    for i in numba.prange(ny):
        for j in range(nx):
            o = opd[i, j]
            a = att[i, j]
            if o == 0.0 and a == 0.0:
                out[i, j] = 0.0
            else:
                m = math.exp(-k0 * a)
                out[i, j] = complex(m * math.cos(k0 * o) - 1.0, m * math.sin(k0 * o))

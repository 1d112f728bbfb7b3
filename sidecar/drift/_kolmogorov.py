"""The two-sided one-sample Kolmogorov distribution, for two-sample KS p-values.

``kolmogorov_sf(n, d)`` is P(D_n >= d). The two-sample asymptotic p-value is this survival
function at ``n = round(n1 * n2 / (n1 + n2))``. Regimes follow Simard and L'Ecuyer (2011),
"Computing the Two-Sided Kolmogorov-Smirnov Distribution": the Ruben-Gambino closed forms at
the extremes, Durbin's matrix (as evaluated by Marsaglia, Tsang and Wang, 2003) where exact
values are cheap, the Birnbaum-Tingey one-sided sum doubled (Miller's approximation) in the
upper tail, and the Pelz-Good (1976) expansion for large ``n`` elsewhere. Plain numpy: it runs
once per feature and window, never per row.
"""

from __future__ import annotations

import math

import numpy as np

_LN10 = math.log(10.0)
_SCALE_EXP = 140
_SCALE = 10.0**_SCALE_EXP
_PI2 = math.pi**2
_PI4 = math.pi**4
_PI6 = math.pi**6
_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _log_factorial_over_power(n: float) -> float:
    """log(n! / n**n)."""
    return math.lgamma(n + 1.0) - n * math.log(n)


def smirnov_sf(n: float, x: float) -> float:
    """P(D_n^+ >= x), the one-sided statistic's exact tail (Birnbaum-Tingey sum)."""
    if x <= 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    t = n * x
    jmax = math.floor(n - t)
    j = np.arange(0, jmax + 1, dtype=np.float64)
    # log C(n, j) from a running sum of log((n - i + 1) / i).
    steps = np.log((n - j[1:] + 1.0) / j[1:])
    log_binom = np.concatenate(([0.0], np.cumsum(steps)))
    left = np.maximum((n - t - j) / n, 0.0)
    right = (t + j) / n
    with np.errstate(divide="ignore"):
        log_terms = log_binom + (n - j) * np.log(left) + (j - 1.0) * np.log(right)
    top = float(np.max(log_terms))
    if not math.isfinite(top):
        return 0.0
    total = float(np.sum(np.exp(log_terms - top)))
    return min(1.0, x * total * math.exp(top))


def _durbin_cdf(n: int, d: float) -> float:
    """P(D_n < d) from Durbin's matrix, raised to the n-th power with exponent tracking."""
    k = math.floor(n * d) + 1
    h = k - n * d
    m = 2 * k - 1
    i = np.arange(m)
    diff = i[:, None] - i[None, :] + 1
    mat = (diff >= 0).astype(np.float64)
    hp = h ** np.arange(1, m + 1, dtype=np.float64)
    mat[:, 0] -= hp
    mat[m - 1, :] -= hp[::-1]
    if 2.0 * h - 1.0 > 0.0:
        mat[m - 1, 0] += (2.0 * h - 1.0) ** m
    fact = np.array([math.factorial(v) if v > 0 else 1 for v in range(m + 1)], dtype=np.float64)
    mat = np.where(diff > 0, mat / fact[np.clip(diff, 0, m)], mat)

    result = np.eye(m)
    result_exp = 0
    base = mat
    base_exp = 0
    power = n
    while power:
        if power & 1:
            result = result @ base
            result_exp += base_exp
            if np.abs(result).max() > _SCALE:
                result /= _SCALE
                result_exp += _SCALE_EXP
        power >>= 1
        if power:
            base = base @ base
            base_exp *= 2
            if np.abs(base).max() > _SCALE:
                base /= _SCALE
                base_exp += _SCALE_EXP
    centre = float(result[k - 1, k - 1])
    if centre <= 0.0:
        return 0.0
    log_p = math.log(centre) + result_exp * _LN10 + _log_factorial_over_power(n)
    return min(1.0, math.exp(log_p))


def _pelz_good_cdf(n: float, x: float) -> float:
    """P(D_n <= x) from the Pelz-Good asymptotic expansion to order n**-1.5."""
    z = math.sqrt(n) * x
    z2 = z * z
    if -_PI2 / (8.0 * z2) < -708.0:
        return 0.0
    kmax = math.ceil(16.0 * z / math.pi) + 1
    k0 = k1 = k2 = k3 = 0.0
    for k in range(1, kmax + 1):
        a = (k - 0.5) ** 2 * _PI2
        e = math.exp(-a / (2.0 * z2))
        k0 += e
        k1 += (a - z2) * e
        k2 += (6 * z2**3 + 2 * z2**2 + (2 * z2**2 - 5 * z2) * a + (1 - 2 * z2) * a * a) * e
        k3 += (
            -30 * z2**3
            - 90 * z2**4
            + (135 * z2**2 - 96 * z2**3) * a
            + (212 * z2**2 - 60 * z2) * a * a
            + (5 - 30 * z2) * a**3
        ) * e
    extra2 = extra3 = 0.0
    for k in range(1, kmax + 1):
        b = _PI2 * k * k
        e = math.exp(-b / (2.0 * z2))
        extra2 += b * e
        extra3 += (3.0 * z2 - b) * b * e
    c0 = _SQRT_2PI / z * k0
    c1 = _SQRT_2PI / (6.0 * z**4) * k1
    c2 = _SQRT_2PI / (72.0 * z**7) * k2 - _SQRT_2PI / (36.0 * z**3) * extra2
    c3 = _SQRT_2PI / (6480.0 * z**10) * k3 + _SQRT_2PI / (216.0 * z**6) * extra3
    return c0 + c1 / math.sqrt(n) + c2 / n + c3 / n**1.5


def _clip(p: float) -> float:
    return min(1.0, max(0.0, p))


def kolmogorov_sf(n: float, d: float) -> float:
    """P(D_n >= d) for the two-sided one-sample Kolmogorov statistic with ``n`` points."""
    if not (math.isfinite(n) and n >= 1 and n == int(n)):
        return math.nan
    if math.isnan(d):
        return math.nan
    if d >= 1.0:
        return 0.0
    if d <= 0.0:
        return 1.0
    t = n * d
    if t <= 1.0:
        if t <= 0.5:
            return 1.0
        cdf = math.exp(_log_factorial_over_power(n) + n * math.log(2.0 * t - 1.0))
        return _clip(1.0 - cdf)
    if t >= n - 1.0:
        return _clip(2.0 * (1.0 - d) ** n)
    if d >= 0.5:
        return _clip(2.0 * smirnov_sf(n, d))
    nd2 = t * d
    if n <= 140:
        if nd2 <= 4.0:
            return _clip(1.0 - _durbin_cdf(int(n), d))
        return _clip(2.0 * smirnov_sf(n, d))
    if nd2 >= 370.0:
        return 0.0
    if nd2 >= 2.2:
        return _clip(2.0 * smirnov_sf(n, d))
    if n <= 100_000 and n * d**1.5 <= 1.4:
        return _clip(1.0 - _durbin_cdf(int(n), d))
    return _clip(1.0 - _pelz_good_cdf(n, d))


def ks_pvalue(d: float, n1: int, n2: int) -> float:
    """Asymptotic two-sided p-value of a two-sample KS statistic ``d`` for sizes n1, n2."""
    if n1 <= 0 or n2 <= 0 or math.isnan(d):
        return math.nan
    big, small = float(max(n1, n2)), float(min(n1, n2))
    en = float(np.round(big * small / (big + small)))
    return kolmogorov_sf(en, d)

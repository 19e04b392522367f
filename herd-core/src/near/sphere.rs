//! Distances on the sphere: the great-circle distance between two points, and a lower bound
//! of the distance from a point to a latitude/longitude rectangle (for pruning the index).

/// The Earth's mean radius in metres (IUGG), the sphere every distance here is measured on.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// The great-circle distance in metres between two points given in degrees (haversine).
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.clamp(0.0, 1.0).sqrt().asin()
}

/// Angular distance (radians) from a point at latitude `lat` (radians) to the half meridian
/// `dlon` radians of longitude away (from pole to pole).
fn to_half_meridian(lat: f64, dlon: f64) -> f64 {
    if dlon >= std::f64::consts::FRAC_PI_2 {
        // The nearest point of a half meridian more than 90° away is the nearer pole.
        std::f64::consts::FRAC_PI_2 - lat.abs()
    } else {
        (lat.cos() * dlon.sin()).clamp(-1.0, 1.0).asin()
    }
}

/// A lower bound, in metres, of the distance from (`lat`, `lon`) to any point of the
/// rectangle `lat0..=lat1` × `lon0..=lon1` (degrees, `lon0 <= lon1`, no wrap inside).
///
/// It is the larger of two bounds, each the distance to a region that holds the rectangle:
/// the band of latitudes (a difference in latitude never exceeds the distance), and the lune
/// of longitudes (the distance to its nearer bounding half meridian).
pub fn rect_lower_bound_m(lat: f64, lon: f64, lat0: f64, lat1: f64, lon0: f64, lon1: f64) -> f64 {
    let band = if lat < lat0 {
        lat0 - lat
    } else if lat > lat1 {
        lat - lat1
    } else {
        0.0
    }
    .to_radians();
    let inside_lon = (lon0..=lon1).contains(&lon)
        || (lon0..=lon1).contains(&(lon + 360.0))
        || (lon0..=lon1).contains(&(lon - 360.0));
    let lune = if inside_lon || lon1 - lon0 >= 360.0 {
        0.0
    } else {
        // Longitude gaps to each edge, going the short way round.
        let gap = |edge: f64| {
            let d = (lon - edge).rem_euclid(360.0);
            d.min(360.0 - d).to_radians()
        };
        let phi = lat.to_radians();
        to_half_meridian(phi, gap(lon0)).min(to_half_meridian(phi, gap(lon1)))
    };
    // A hair below, so that rounding never lifts the bound above a true distance.
    (band.max(lune) * EARTH_RADIUS_M * (1.0 - 1e-9) - 1e-6).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_distances() {
        // UCLA to the Eiffel Tower, about 9,090 km.
        let d = distance_m(34.068930, -118.445127, 48.858370, 2.294481);
        assert!((d - 9_090_000.0).abs() < 20_000.0, "{d}");
        assert_eq!(distance_m(10.0, 20.0, 10.0, 20.0), 0.0);
        // Across the antimeridian: one degree of longitude at the equator.
        let d = distance_m(0.0, 179.5, 0.0, -179.5);
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
        // Pole to pole.
        let d = distance_m(90.0, 0.0, -90.0, 77.0);
        assert!((d - std::f64::consts::PI * EARTH_RADIUS_M).abs() < 1e-3);
    }

    #[test]
    fn the_bound_is_zero_inside_and_below_every_distance_outside() {
        assert_eq!(rect_lower_bound_m(10.0, 10.0, 0.0, 20.0, 0.0, 20.0), 0.0);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |lo: f64, hi: f64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            lo + (hi - lo) * ((rng >> 11) as f64 / (1u64 << 53) as f64)
        };
        for _ in 0..20_000 {
            let (lat, lon) = (next(-90.0, 90.0), next(-180.0, 180.0));
            let (a, b) = (next(-90.0, 90.0), next(-90.0, 90.0));
            let (c, d) = (next(-180.0, 180.0), next(-180.0, 180.0));
            let (lat0, lat1, lon0, lon1) = (a.min(b), a.max(b), c.min(d), c.max(d));
            let bound = rect_lower_bound_m(lat, lon, lat0, lat1, lon0, lon1);
            for _ in 0..8 {
                let (qlat, qlon) = (next(lat0, lat1), next(lon0, lon1));
                let dist = distance_m(lat, lon, qlat, qlon);
                assert!(bound <= dist, "bound {bound} > {dist}");
            }
            // The corners and edges too.
            for (qlat, qlon) in [(lat0, lon0), (lat1, lon1), (lat0, lon1), (lat1, lon0)] {
                assert!(bound <= distance_m(lat, lon, qlat, qlon));
            }
        }
    }
}

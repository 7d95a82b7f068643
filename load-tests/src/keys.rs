//! Which key (course, book, account...) a command is about: uniform, or Zipf-skewed.

/// Picks keys `0..n`, uniformly or with Zipf popularity: key `k` is drawn with weight
/// `1 / (k + 1)^skew`, so with `skew` 1 key 0 is drawn twice as often as key 1.
#[derive(Debug, Clone)]
pub(crate) struct KeyPicker {
    n: usize,
    /// Cumulative weights, normalised to end at 1; `None` for uniform.
    cdf: Option<Vec<f64>>,
}

impl KeyPicker {
    pub(crate) fn new(n: usize, skew: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(n > 0, "--keys must be at least 1");
        anyhow::ensure!(
            skew.is_finite() && skew >= 0.0,
            "--skew must be a finite number >= 0 (got {skew})"
        );
        if skew == 0.0 {
            return Ok(Self { n, cdf: None });
        }
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|k| {
                total += 1.0 / ((k + 1) as f64).powf(skew);
                total
            })
            .collect();
        for c in &mut cdf {
            *c /= total;
        }
        Ok(Self { n, cdf: Some(cdf) })
    }

    pub(crate) fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        match &self.cdf {
            None => rng.usize(..self.n),
            Some(cdf) => {
                let u = rng.f64();
                cdf.partition_point(|&c| c < u).min(self.n - 1)
            }
        }
    }

    /// Two different keys (the same one when there is only one).
    pub(crate) fn pick_pair(&self, rng: &mut fastrand::Rng) -> (usize, usize) {
        let a = self.pick(rng);
        if self.n == 1 {
            return (a, a);
        }
        loop {
            let b = self.pick(rng);
            if b != a {
                return (a, b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_covers_every_key() {
        let picker = KeyPicker::new(4, 0.0).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut seen = [0usize; 4];
        for _ in 0..4_000 {
            seen[picker.pick(&mut rng)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }

    #[test]
    fn zipf_one_draws_key_zero_about_twice_as_often_as_key_one() {
        let picker = KeyPicker::new(100, 1.0).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut seen = vec![0usize; 100];
        for _ in 0..200_000 {
            seen[picker.pick(&mut rng)] += 1;
        }
        let ratio = seen[0] as f64 / seen[1] as f64;
        assert!(
            (1.8..2.2).contains(&ratio),
            "ratio {ratio}, {:?}",
            &seen[..5]
        );
        assert!(seen[99] > 0, "the least popular key is still drawn");
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(KeyPicker::new(0, 0.0).is_err());
        assert!(KeyPicker::new(10, -1.0).is_err());
        assert!(KeyPicker::new(10, f64::NAN).is_err());
    }
}

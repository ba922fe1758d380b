//! Sizes, rates and ratios as people type and read them.

/// Parses a byte count: a number with an optional binary suffix `K`, `M`,
/// `G` or `T` (any case, optionally followed by `i` and/or `B`), so `4096`,
/// `512K`, `256M`, `1G`, `1GiB` and `1.5G` all work. Every suffix is a power
/// of 1024; a fractional result is rounded down to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        _ => return Err(format!("{s:?} is not a size: use a number with K, M, G or T (powers of 1024), e.g. 256M")),
    };
    if num.is_empty() || num.matches('.').count() > 1 {
        return Err(format!("{s:?} is not a size: use a number with K, M, G or T (powers of 1024), e.g. 256M"));
    }
    let bytes = if num.contains('.') {
        let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
        let b = v * (1u64 << shift) as f64;
        if !b.is_finite() || b >= u64::MAX as f64 {
            return Err(format!("{s:?} is too large"));
        }
        b as u64
    } else {
        let v: u64 = num.parse().map_err(|_| format!("{s:?} is too large"))?;
        v.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))?
    };
    Ok(bytes)
}

/// Bytes in the largest binary unit that keeps the figure at least 1,
/// without a needless `.0`: `64 KiB`, `256 MiB`, `1 GiB`, `1.5 GiB`.
pub fn short_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    let text = format!("{v:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[u])
}

/// A whole number with thousands separators: `12,345`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate with a sensible number of digits: two decimals below 10, one
/// below 1,000, whole (grouped) numbers above.
pub fn rate(v: f64) -> String {
    if !v.is_finite() {
        "n/a".to_string()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        group(v.round() as u64)
    }
}

/// `dir / baseline`, or `None` when that is not a finite number.
pub fn ratio(dir: f64, baseline: f64) -> Option<f64> {
    let r = dir / baseline;
    (baseline > 0.0 && r.is_finite()).then_some(r)
}

/// A ratio as shown in the table: `0.0034x`, `0.27x`, `1.5x`, `120x`, or
/// `n/a`. Below 0.1 it keeps two significant digits, so that small ratios
/// still differ.
pub fn ratio_text(r: Option<f64>) -> String {
    match r {
        None => "n/a".to_string(),
        Some(r) if r <= 0.0 => "0x".to_string(),
        Some(r) if r < 0.1 => {
            let decimals = ((-r.log10()).ceil() as usize + 1).min(9);
            format!("{r:.decimals$}x")
        }
        Some(r) if r < 10.0 => format!("{r:.2}x"),
        Some(r) if r < 100.0 => format!("{r:.1}x"),
        Some(r) => format!("{}x", group(r.round() as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1gb"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(" 64 KiB "), Ok(64 << 10));
        assert_eq!(parse_size("10B"), Ok(10));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for s in ["", "G", "1X", "1.2.3M", "-1M", "1e9", "99999999999999999999", "20000000T"] {
            assert!(parse_size(s).is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn sizes_print_short() {
        assert_eq!(short_size(65536), "64 KiB");
        assert_eq!(short_size(1 << 30), "1 GiB");
        assert_eq!(short_size(256 << 20), "256 MiB");
        assert_eq!(short_size(3 << 29), "1.5 GiB");
        assert_eq!(short_size(100), "100 B");
    }

    #[test]
    fn numbers_group() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }

    #[test]
    fn rates_print() {
        assert_eq!(rate(4.56789), "4.57");
        assert_eq!(rate(123.45), "123.5");
        assert_eq!(rate(12345.6), "12,346");
        assert_eq!(rate(f64::NAN), "n/a");
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(50.0, 200.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio_text(Some(0.25)), "0.25x");
        assert_eq!(ratio_text(Some(0.05)), "0.050x");
        assert_eq!(ratio_text(Some(0.0123)), "0.012x");
        assert_eq!(ratio_text(Some(0.0034)), "0.0034x");
        assert_eq!(ratio_text(Some(0.01)), "0.010x");
        assert_eq!(ratio_text(Some(0.0)), "0x");
        assert_eq!(ratio_text(Some(12.34)), "12.3x");
        assert_eq!(ratio_text(Some(1234.0)), "1,234x");
        assert_eq!(ratio_text(None), "n/a");
    }
}

//! Exact scans of decrypted vector blocks: the inner loop of list-major batched search, of
//! probe selection and of list assignment (docs/PROTOCOL.md §13, "Optional
//! decryption").
//!
//! A [`Block`] holds a segment's (or the centroids') prepared vectors in tiles of [`TILE`]
//! vectors, each tile dimension-major (padded with zeros), so that scoring one query against
//! a tile is `dim` broadcast-multiply-adds over contiguous lanes held in registers, which the
//! compiler turns into SIMD code without `unsafe`, reading memory strictly sequentially.
//! Every (query, vector) score is accumulated in dimension order from `0.0`, exactly like
//! [`exact_rank`], so the blocked scan and the scalar reference give bit-identical ranks: a
//! batch, a single query and the SQ8 path's re-rank report the same distance for the same
//! item.

use zeroize::Zeroizing;

use crate::metric::Metric;

/// Vectors scored together by one pass over the dimensions.
pub(crate) const TILE: usize = 16;

/// Where component `i` of vector `j` lives in a block: tile-major, then dimension, then the
/// vector's lane in its tile.
fn at(dim: usize, i: usize, j: usize) -> usize {
    (j / TILE) * dim * TILE + i * TILE + j % TILE
}

/// Prepared vectors in tiles of [`TILE`] (zero-padded), each tile dimension-major, so a
/// scan reads memory sequentially with one register accumulator per vector of the tile.
/// The buffer is wiped on drop.
pub(crate) struct Block {
    dim: usize,
    len: usize,
    padded: usize,
    data: Zeroizing<Vec<f32>>,
}

impl Block {
    /// Transposes `len` rows of `dim` floats (`rows` yields exactly `len` slices of `dim`).
    pub(crate) fn from_rows<'a>(
        dim: usize,
        len: usize,
        rows: impl IntoIterator<Item = &'a [f32]>,
    ) -> Self {
        let padded = len.div_ceil(TILE) * TILE;
        let mut data = Zeroizing::new(vec![0f32; dim * padded]);
        for (j, row) in rows.into_iter().take(len).enumerate() {
            for (i, x) in row.iter().take(dim).enumerate() {
                data[at(dim, i, j)] = *x;
            }
        }
        Self {
            dim,
            len,
            padded,
            data,
        }
    }

    /// Transposes `len` rows of `dim` little-endian f32 (`bytes` holds exactly
    /// `len · dim · 4` bytes).
    pub(crate) fn from_le_bytes(dim: usize, len: usize, bytes: &[u8]) -> Self {
        let padded = len.div_ceil(TILE) * TILE;
        let mut data = Zeroizing::new(vec![0f32; dim * padded]);
        for (j, row) in bytes.chunks_exact(4 * dim.max(1)).take(len).enumerate() {
            for (i, x) in row.chunks_exact(4).enumerate() {
                data[at(dim, i, j)] = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
            }
        }
        Self {
            dim,
            len,
            padded,
            data,
        }
    }

    /// Number of vectors (without padding).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Plaintext bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// Entries per row of [`Block::rank_many`]'s output: the length rounded up to a tile.
    #[cfg(test)]
    pub(crate) fn padded(&self) -> usize {
        self.padded
    }

    /// Ranks (smaller is closer, as [`exact_rank`]) of the prepared `query` against every
    /// vector, into `out` (resized to the padded length; padding entries are meaningless).
    #[cfg(test)]
    pub(crate) fn rank_all(&self, metric: Metric, query: &[f32], out: &mut Vec<f32>) {
        self.rank_many(metric, std::slice::from_ref(&query), out);
    }

    /// Number of tiles (`padded / TILE`).
    pub(crate) fn tiles(&self) -> usize {
        self.padded / TILE
    }

    /// [`Block::rank_all`] for several prepared queries at once: row `k` of `out` (entries
    /// `k·TILE·tiles() ..`) ranks `queries[k]`. See [`Block::rank_tiles`].
    pub(crate) fn rank_many(&self, metric: Metric, queries: &[&[f32]], out: &mut Vec<f32>) {
        self.rank_tiles(metric, queries, 0..self.tiles(), out);
    }

    /// Ranks of several prepared queries against the vectors of `tiles` (a range of tile
    /// numbers, vectors `TILE·tiles.start ..`): row `k` of `out`, `TILE·tiles.len()` entries
    /// long, ranks `queries[k]`. Up to [`GROUP`] queries share each pass over a tile, so every
    /// vector lane read from memory serves all of them, and the kernel runs with AVX2 where
    /// the CPU has it (runtime dispatch). Each score is still accumulated in dimension order
    /// from `0.0` with separate multiplies and adds (no fused multiply-add), so the ranks are
    /// bit-identical to [`exact_rank`]'s whatever the vector width or grouping.
    pub(crate) fn rank_tiles(
        &self,
        metric: Metric,
        queries: &[&[f32]],
        tiles: std::ops::Range<usize>,
        out: &mut Vec<f32>,
    ) {
        let tiles = tiles.start.min(self.tiles())..tiles.end.min(self.tiles());
        let width = tiles.len() * TILE;
        out.clear();
        out.resize(queries.len() * width, 0.0);
        if width == 0 {
            return;
        }
        if self.dim == 0 || queries.iter().any(|q| q.len() != self.dim) {
            out.fill(f32::INFINITY);
            return;
        }
        let step = self.dim * TILE;
        pulp::Arch::new().dispatch(Scan {
            data: &self.data[tiles.start * step..tiles.end * step],
            dim: self.dim,
            mode: match metric {
                Metric::Euclidean | Metric::SquaredEuclidean => L2,
                Metric::Cosine => COSINE,
                Metric::DotProduct => DOT,
            },
            queries,
            out,
            width,
        });
    }
}

/// Queries scored together by one pass over a tile: `GROUP · TILE` accumulators (8 AVX2
/// registers) plus the tile's lanes and a broadcast query component fit in the 16 registers.
pub(crate) const GROUP: usize = 4;

/// One [`Block::rank_many`] call, run by `pulp` under the best instruction set found.
struct Scan<'a> {
    /// The scanned tiles.
    data: &'a [f32],
    dim: usize,
    mode: u8,
    queries: &'a [&'a [f32]],
    out: &'a mut [f32],
    /// Entries per row of `out`: `TILE` per scanned tile.
    width: usize,
}

impl pulp::WithSimd for Scan<'_> {
    type Output = ();

    #[allow(
        clippy::inline_always,
        reason = "inlined into pulp's AVX2 function, or it runs without AVX2"
    )]
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        match self.mode {
            L2 => self.groups::<L2>(),
            COSINE => self.groups::<COSINE>(),
            _ => self.groups::<DOT>(),
        }
    }
}

impl Scan<'_> {
    #[allow(
        clippy::inline_always,
        reason = "inlined into pulp's AVX2 function, or it runs without AVX2"
    )]
    #[inline(always)]
    fn groups<const MODE: u8>(self) {
        let Self {
            data,
            dim,
            queries,
            out,
            width,
            ..
        } = self;
        // The group's queries interleaved dimension-major: `qt[i·n + k]` is component `i` of
        // the group's query `k` (`n` queries in the group).
        let mut qt = Zeroizing::new(vec![0f32; dim * GROUP]);
        for (qs, out) in queries.chunks(GROUP).zip(out.chunks_mut(GROUP * width)) {
            let n = qs.len();
            for (i, lanes) in qt.chunks_exact_mut(n).take(dim).enumerate() {
                for (lane, q) in lanes.iter_mut().zip(qs) {
                    *lane = q[i];
                }
            }
            let qt = &qt[..dim * n];
            match n {
                4 => tiles::<MODE, 4>(data, dim, qt, out, width),
                3 => tiles::<MODE, 3>(data, dim, qt, out, width),
                2 => tiles::<MODE, 2>(data, dim, qt, out, width),
                _ => tiles::<MODE, 1>(data, dim, qt, out, width),
            }
        }
    }
}

/// `out[k·width + j]` = the rank of vector `j` for query `k` of `qt` (`Q` queries
/// interleaved dimension-major): `Σ_i (q_i − x_ij)²` (`L2`), `1 − Σ_i q_i·x_ij` (`COSINE`)
/// or `−Σ_i q_i·x_ij` (`DOT`). Per tile, `dim` steps over contiguous memory with the
/// `Q · TILE` sums in registers.
#[allow(
    clippy::inline_always,
    reason = "inlined into pulp's AVX2 function, or it runs without AVX2"
)]
#[inline(always)]
fn tiles<const MODE: u8, const Q: usize>(
    data: &[f32],
    dim: usize,
    qt: &[f32],
    out: &mut [f32],
    width: usize,
) {
    let (qt, _) = qt.as_chunks::<Q>();
    for (t, tile) in data.chunks_exact(dim * TILE).enumerate() {
        let mut acc = [[0f32; TILE]; Q];
        for (x, q) in tile.as_chunks::<TILE>().0.iter().zip(qt) {
            for (a, &qk) in acc.iter_mut().zip(q) {
                for (a, &xl) in a.iter_mut().zip(x) {
                    if MODE == L2 {
                        let d = qk - xl;
                        *a += d * d;
                    } else {
                        *a += qk * xl;
                    }
                }
            }
        }
        for (row, a) in out.chunks_exact_mut(width).zip(&acc) {
            for (o, &a) in row[t * TILE..][..TILE].iter_mut().zip(a) {
                let r = match MODE {
                    COSINE => 1.0 - a,
                    DOT => -a,
                    _ => a,
                };
                *o = sane_rank(r);
            }
        }
    }
}

const L2: u8 = 0;
const COSINE: u8 = 1;
const DOT: u8 = 2;

/// Exact ranking key of two prepared vectors, accumulated in dimension order (the scalar
/// reference of [`Block::rank_all`]; never NaN).
pub(crate) fn exact_rank(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    let r = match metric {
        Metric::Euclidean | Metric::SquaredEuclidean => {
            a.iter().zip(b).fold(0.0, |acc: f32, (x, y)| {
                let d = x - y;
                acc + d * d
            })
        }
        Metric::Cosine => 1.0 - a.iter().zip(b).fold(0.0, |acc: f32, (x, y)| acc + x * y),
        Metric::DotProduct => -a.iter().zip(b).fold(0.0, |acc: f32, (x, y)| acc + x * y),
    };
    sane_rank(r)
}

/// Vectors (k-means points, upserted items, queries) matched against the centroids in one
/// [`Probe::nearest_many`] call: the centroids are read once per group of [`GROUP`].
pub(crate) const MATCHED_TOGETHER: usize = 64;

/// The centroids prepared for ranking lists against a prepared vector under the index
/// metric: as stored for L2 and inner product, normalized for cosine (so the list rank is
/// `-cos` of the centroid direction, as before).
pub(crate) struct Probe {
    block: Block,
    /// Metric of the block scan: L2 for Euclidean, inner product otherwise.
    metric: Metric,
}

impl Probe {
    pub(crate) fn new(centroids: &[f32], dim: usize, metric: Metric) -> Self {
        let n = centroids.len().checked_div(dim).unwrap_or(0);
        let rows: Vec<Zeroizing<Vec<f32>>> = centroids
            .chunks_exact(dim.max(1))
            .map(|c| {
                Zeroizing::new(match metric {
                    Metric::Cosine => crate::metric::normalized(c),
                    Metric::Euclidean | Metric::SquaredEuclidean | Metric::DotProduct => c.to_vec(),
                })
            })
            .collect();
        Self {
            block: Block::from_rows(dim, n, rows.iter().map(|r| r.as_slice())),
            metric: match metric {
                Metric::Euclidean | Metric::SquaredEuclidean => Metric::Euclidean,
                Metric::Cosine | Metric::DotProduct => Metric::DotProduct,
            },
        }
    }

    /// Indices of the `n` lists best matching `v`, best first (ties by index); `scratch` is
    /// reused between calls.
    #[cfg(test)]
    pub(crate) fn nearest(&self, v: &[f32], n: usize, scratch: &mut Vec<f32>) -> Vec<u32> {
        self.nearest_many(std::slice::from_ref(&v), n, scratch)
            .pop()
            .unwrap_or_default()
    }

    /// [`Probe::nearest`] for each of `vs`, ranked together ([`Block::rank_many`]: the
    /// centroids are read once per group of queries, not once per query).
    pub(crate) fn nearest_many(
        &self,
        vs: &[&[f32]],
        n: usize,
        scratch: &mut Vec<f32>,
    ) -> Vec<Vec<u32>> {
        let len = self.block.len();
        if len == 0 {
            return vec![Vec::new(); vs.len()];
        }
        self.block.rank_many(self.metric, vs, scratch);
        scratch
            .chunks_exact(self.block.tiles() * TILE)
            .map(|row| best_of(&row[..len], n))
            .collect()
    }
}

/// The indices of the `n` smallest ranks of `row` (non-empty), smallest first, ties by index.
fn best_of(row: &[f32], n: usize) -> Vec<u32> {
    let n = n.min(row.len());
    if n == 1 {
        // The first index of the smallest rank: the minimum in `TILE` independent lanes (which
        // the compiler vectorizes), then a search for it (ranks are never NaN; -0 equals +0,
        // as in a `<` scan).
        let mut lanes = [f32::INFINITY; TILE];
        let (tiles, rest) = row.as_chunks::<TILE>();
        for t in tiles {
            for (m, &r) in lanes.iter_mut().zip(t) {
                *m = if r < *m { r } else { *m };
            }
        }
        let min = lanes
            .iter()
            .chain(rest)
            .fold(f32::INFINITY, |m, &r| if r < m { r } else { m });
        let first = row.iter().position(|&r| r <= min).unwrap_or(0);
        return vec![u32::try_from(first).unwrap_or(u32::MAX)];
    }
    let mut d: Vec<(f32, u32)> = row
        .iter()
        .enumerate()
        .map(|(i, r)| (*r, u32::try_from(i).unwrap_or(u32::MAX)))
        .collect();
    let cmp = |a: &(f32, u32), b: &(f32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if n < d.len() {
        d.select_nth_unstable_by(n, cmp);
        d.truncate(n);
    }
    d.sort_by(cmp);
    d.into_iter().map(|(_, i)| i).collect()
}

/// Ranks are "smaller is closer"; a NaN (which finite, bounded inputs cannot produce, but a
/// corrupted quantizer could) sorts last instead of first.
pub(crate) fn sane_rank(r: f32) -> f32 {
    if r.is_nan() {
        f32::INFINITY
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_scan_matches_scalar_reference_bit_for_bit() {
        let dim = 13;
        let rows: Vec<Vec<f32>> = (0..37)
            .map(|j| {
                (0..dim)
                    .map(|i| ((j * 31 + i * 17) % 23) as f32 * 0.173 - 1.9)
                    .collect()
            })
            .collect();
        let block = Block::from_rows(dim, rows.len(), rows.iter().map(Vec::as_slice));
        assert_eq!(block.len(), 37);
        let q: Vec<f32> = (0..dim).map(|i| i as f32 * 0.11 - 0.5).collect();
        let mut out = Vec::new();
        for metric in [Metric::Euclidean, Metric::Cosine, Metric::DotProduct] {
            block.rank_all(metric, &q, &mut out);
            for (j, r) in rows.iter().enumerate() {
                assert_eq!(out[j].to_bits(), exact_rank(metric, &q, r).to_bits());
            }
        }
        // Grouped: every group size and remainder (1..=9 queries), each row bit-identical.
        let qs: Vec<Vec<f32>> = (0..9)
            .map(|k| {
                (0..dim)
                    .map(|i| ((i * 5 + k * 3) % 11) as f32 * 0.29 - 1.3)
                    .collect()
            })
            .collect();
        for n in 1..=qs.len() {
            let refs: Vec<&[f32]> = qs[..n].iter().map(Vec::as_slice).collect();
            for metric in [Metric::Euclidean, Metric::Cosine, Metric::DotProduct] {
                block.rank_many(metric, &refs, &mut out);
                assert_eq!(out.len(), n * block.padded());
                for (k, q) in refs.iter().enumerate() {
                    for (j, r) in rows.iter().enumerate() {
                        let got = out[k * block.padded() + j];
                        assert_eq!(got.to_bits(), exact_rank(metric, q, r).to_bits());
                    }
                }
            }
        }
        // A run of tiles gives the same ranks as the whole block at its offset; a range past
        // the end is clamped.
        let refs: Vec<&[f32]> = qs[..5].iter().map(Vec::as_slice).collect();
        let mut all = Vec::new();
        block.rank_many(Metric::Euclidean, &refs, &mut all);
        let mut part = Vec::new();
        block.rank_tiles(Metric::Euclidean, &refs, 1..9, &mut part);
        let width = (block.tiles() - 1) * TILE;
        assert_eq!(part.len(), 5 * width);
        for k in 0..5 {
            let whole = &all[k * block.padded()..][TILE..block.padded()];
            assert_eq!(&part[k * width..][..width], whole);
        }
        // A query of the wrong length ranks nothing.
        block.rank_many(Metric::Euclidean, &[&q, &q[1..]], &mut out);
        assert!(out.iter().all(|r| *r == f32::INFINITY));
    }

    #[test]
    fn probe_ranks_like_the_metric() {
        let cents = [1.0f32, 0.0, 10.0, 0.0];
        let mut s = Vec::new();
        let v = [2.0, 0.0];
        assert_eq!(
            Probe::new(&cents, 2, Metric::Euclidean).nearest(&v, 1, &mut s),
            vec![0]
        );
        assert_eq!(
            Probe::new(&cents, 2, Metric::DotProduct).nearest(&v, 2, &mut s),
            vec![1, 0]
        );
        let cos = [3.0f32, 4.0, 0.0, 0.5];
        assert_eq!(
            Probe::new(&cos, 2, Metric::Cosine).nearest(&[0.6, 0.8], 1, &mut s),
            vec![0]
        );
        assert_eq!(
            Probe::new(&cos, 2, Metric::Euclidean).nearest(&[0.0, 1.0], 1, &mut s),
            vec![1]
        );
    }
}

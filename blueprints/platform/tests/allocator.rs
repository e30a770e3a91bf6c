//! The allocator every generated binary declares (`platform::Allocator`), as they declare it.

#[global_allocator]
static ALLOCATOR: platform::Allocator = platform::Allocator;

/// Kilobytes of this process's memory backed by transparent huge pages.
fn huge_kb() -> u64 {
    std::fs::read_to_string("/proc/self/smaps")
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("AnonHugePages:"))
        .map(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

/// mimalloc advises the kernel to back its arenas with huge pages unless built with
/// `no_thp`; where THP is `madvise` (the kernel honours only advised memory, and glibc
/// advises none), a first touch then makes 2 MiB resident for a few bytes. Only that
/// setting tells the two apart: under `always` everything gets them, under `never` nothing.
#[test]
#[cfg(target_os = "linux")]
fn the_allocator_asks_for_no_transparent_huge_pages() {
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !mode.contains("[madvise]") {
        eprintln!(
            "THP is not at madvise here ({}): nothing to tell apart",
            mode.trim()
        );
        return;
    }
    let before = huge_kb();
    // Many small blocks and a few large ones, each page touched, as a service's heap grows.
    let small: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 512]).collect();
    let large: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 4 << 20]).collect();
    // Kept until measured: an allocation nothing reads may be optimised away.
    std::hint::black_box((&small, &large));
    let after = huge_kb();
    assert_eq!(
        after,
        before,
        "{} kB of the heap came in transparent huge pages",
        after - before
    );
}

//! Three-way merge of one file's contents, with git's own merge (libgit2's xdiff, through
//! git2, which the generator already links): the base is the file as last generated, ours
//! is the file on disk, theirs is the new render. A conflict comes back with diff3-style
//! markers, so the user sees all three versions where they disagree.

use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    Clean(Vec<u8>),
    /// The merged text with conflict markers in it.
    Conflict(Vec<u8>),
}

/// The labels on the conflict markers.
pub struct Labels<'a> {
    pub base: &'a str,
    pub ours: &'a str,
    pub theirs: &'a str,
}

pub fn three_way(
    path: &str,
    base: &[u8],
    ours: &[u8],
    theirs: &[u8],
    labels: &Labels<'_>,
) -> Result<Merged> {
    fn input<'a>(content: &'a [u8], path: &str) -> git2::MergeFileInput<'a> {
        let mut input = git2::MergeFileInput::new();
        input.content(content).path(path);
        input
    }
    // git2's merge_file does not initialise libgit2 itself (it then fails with "no error"
    // when nothing else in the process touched git2 first); Buf::new does.
    drop(git2::Buf::new());
    let mut options = git2::MergeFileOptions::new();
    options
        .ancestor_label(labels.base)
        .our_label(labels.ours)
        .their_label(labels.theirs)
        .style_diff3(true);
    let result = git2::merge_file(
        &input(base, path),
        &input(ours, path),
        &input(theirs, path),
        Some(&mut options),
    )?;
    let content = result.content().to_vec();
    Ok(if result.is_automergeable() {
        Merged::Clean(content)
    } else {
        Merged::Conflict(content)
    })
}

/// True when a line starts with a conflict marker that `three_way` writes.
pub fn has_conflict_markers(text: &[u8]) -> bool {
    text.split(|b| *b == b'\n').any(|line| {
        (line.starts_with(b"<<<<<<< ") || line.starts_with(b">>>>>>> ")) && line.len() > 8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: Labels<'static> = Labels {
        base: "base",
        ours: "yours",
        theirs: "new",
    };

    #[test]
    fn edits_in_different_places_merge() {
        let base = b"a\nb\nc\nd\ne\nf\n";
        let ours = b"a\nb (mine)\nc\nd\ne\nf\n";
        let theirs = b"a\nb\nc\nd\ne\nf (new)\n";
        assert_eq!(
            three_way("x.rs", base, ours, theirs, &LABELS).unwrap(),
            Merged::Clean(b"a\nb (mine)\nc\nd\ne\nf (new)\n".to_vec())
        );
    }

    #[test]
    fn overlapping_edits_conflict_with_all_three_versions() {
        let merged = three_way(
            "x.rs",
            b"a\nb\nc\n",
            b"a\nmine\nc\n",
            b"a\nnew\nc\n",
            &LABELS,
        )
        .unwrap();
        let Merged::Conflict(text) = merged else {
            panic!("expected a conflict")
        };
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("<<<<<<< yours\nmine\n"), "{text}");
        assert!(text.contains("||||||| base\nb\n"), "{text}");
        assert!(text.contains("=======\nnew\n>>>>>>> new"), "{text}");
        assert!(has_conflict_markers(text.as_bytes()));
        assert!(!has_conflict_markers(b"a\n<<<<<<<\nno label\n"));
    }
}

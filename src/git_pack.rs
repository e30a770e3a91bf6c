//! The first commit of a new workspace, written as one pack file and its index.
//!
//! libgit2 builds the same commit, but its pack builder searches every object for a delta
//! against ten others (a workspace's services are alike, so it keeps finding them) and its
//! indexer then inflates and hashes the whole pack again: for 50 contexts that was a third
//! of `archscaffold new`. Here each object is hashed once and compressed once, without
//! deltas. The pack is larger than the one git would write (its next `git gc` shrinks it);
//! the objects, and so every id, are the same. Formats: pack version 2 and pack index
//! version 2 (gitformat-pack(5)).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::ZlibEncoder;
use sha1::{Digest, Sha1};

use crate::error::{Error, Result};

/// A git object id: the SHA-1 of the object's header and contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(pub [u8; 20]);

impl ObjectId {
    pub fn hex(&self) -> String {
        crate::hex::lower(&self.0)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Commit = 1,
    Tree = 2,
    Blob = 3,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Commit => "commit",
            Kind::Tree => "tree",
            Kind::Blob => "blob",
        }
    }
}

/// An object's place in the pack, for the index.
struct Entry {
    id: ObjectId,
    offset: u64,
    crc32: u32,
}

/// Objects collected into one pack, each once.
#[derive(Default)]
pub struct Pack {
    /// The entries, without the pack's 12-byte header.
    body: Vec<u8>,
    entries: Vec<Entry>,
    seen: HashSet<ObjectId>,
}

const HEADER_LEN: u64 = 12;

impl Pack {
    /// Adds an object (once, however often it is added) and returns its id.
    pub fn add(&mut self, kind: Kind, data: &[u8]) -> Result<ObjectId> {
        let id = ObjectId(
            Sha1::new()
                .chain_update(format!("{} {}\0", kind.name(), data.len()))
                .chain_update(data)
                .finalize()
                .into(),
        );
        if !self.seen.insert(id) {
            return Ok(id);
        }
        let start = self.body.len();
        // Type and size: 3 bits of type and 4 of size, then 7 bits of size a byte, low
        // bits first, the high bit saying another byte follows.
        let mut size = data.len();
        let mut byte = ((kind as u8) << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size != 0 {
            self.body.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        self.body.push(byte);
        let mut encoder = ZlibEncoder::new(&mut self.body, Compression::fast());
        encoder.write_all(data).map_err(pack_error)?;
        encoder.finish().map_err(pack_error)?;
        self.entries.push(Entry {
            id,
            offset: HEADER_LEN + start as u64,
            crc32: crc32fast::hash(&self.body[start..]),
        });
        Ok(id)
    }

    /// Adds the trees of `files` (path → blob id and mode) and returns the root tree's id.
    pub fn add_tree(&mut self, files: &BTreeMap<String, (ObjectId, u32)>) -> Result<ObjectId> {
        let mut root = Dir::default();
        for (path, &(id, mode)) in files {
            root.insert(path, id, mode);
        }
        root.write(self)
    }

    /// Writes `pack-<checksum>.pack` and its `.idx` into `pack_dir`.
    pub fn write(self, pack_dir: &Path) -> Result<()> {
        let count = u32::try_from(self.entries.len())
            .map_err(|_| Error::Blueprint("too many objects for one pack".into()))?;
        let mut pack = Vec::with_capacity(self.body.len() + 32);
        pack.extend_from_slice(b"PACK");
        pack.extend_from_slice(&2u32.to_be_bytes());
        pack.extend_from_slice(&count.to_be_bytes());
        pack.extend_from_slice(&self.body);
        let checksum: [u8; 20] = Sha1::digest(&pack).into();
        pack.extend_from_slice(&checksum);

        let mut entries = self.entries;
        entries.sort_by_key(|e| e.id);
        let mut index = Vec::with_capacity(8 + 1024 + entries.len() * 28 + 40);
        index.extend_from_slice(b"\xfftOc");
        index.extend_from_slice(&2u32.to_be_bytes());
        // Fan-out: how many ids start with a byte up to each value.
        for first in 0..=255u8 {
            let upto = entries.partition_point(|e| e.id.0[0] <= first) as u32;
            index.extend_from_slice(&upto.to_be_bytes());
        }
        for e in &entries {
            index.extend_from_slice(&e.id.0);
        }
        for e in &entries {
            index.extend_from_slice(&e.crc32.to_be_bytes());
        }
        for e in &entries {
            // Offsets past 2 GiB would need the index's large-offset table.
            let offset = u32::try_from(e.offset)
                .ok()
                .filter(|o| o & 0x8000_0000 == 0)
                .ok_or_else(|| Error::Blueprint("the first commit is over 2 GiB".into()))?;
            index.extend_from_slice(&offset.to_be_bytes());
        }
        index.extend_from_slice(&checksum);
        let index_checksum: [u8; 20] = Sha1::digest(&index).into();
        index.extend_from_slice(&index_checksum);

        fs::create_dir_all(pack_dir).map_err(Error::io(pack_dir))?;
        let name = format!("pack-{}", ObjectId(checksum).hex());
        // The index last: git reads a pack only once its index exists.
        for (extension, bytes) in [("pack", &pack), ("idx", &index)] {
            let path = pack_dir.join(format!("{name}.{extension}"));
            fs::write(&path, bytes).map_err(Error::io(&path))?;
        }
        Ok(())
    }
}

fn pack_error(e: std::io::Error) -> Error {
    Error::Blueprint(format!("cannot compress a git object: {e}"))
}

/// A directory of the tree being built.
#[derive(Default)]
struct Dir {
    files: BTreeMap<String, (ObjectId, u32)>,
    dirs: BTreeMap<String, Dir>,
}

impl Dir {
    fn insert(&mut self, path: &str, id: ObjectId, mode: u32) {
        match path.split_once('/') {
            Some((dir, rest)) => self
                .dirs
                .entry(dir.to_string())
                .or_default()
                .insert(rest, id, mode),
            None => {
                self.files.insert(path.to_string(), (id, mode));
            }
        }
    }

    fn write(&self, pack: &mut Pack) -> Result<ObjectId> {
        // Git orders a tree's entries by name, a directory's name as if it ended in `/`.
        let mut entries: Vec<(String, u32, ObjectId)> = Vec::new();
        for (name, dir) in &self.dirs {
            entries.push((format!("{name}/"), 0o40000, dir.write(pack)?));
        }
        for (name, &(id, mode)) in &self.files {
            entries.push((name.clone(), mode, id));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut data = Vec::new();
        for (name, mode, id) in entries {
            let name = name.strip_suffix('/').unwrap_or(&name);
            data.extend_from_slice(format!("{mode:o} {name}\0").as_bytes());
            data.extend_from_slice(&id.0);
        }
        pack.add(Kind::Tree, &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_ones_git_gives() {
        let mut pack = Pack::default();
        // `git hash-object` of "hello\n" and of an empty file.
        let hello = pack.add(Kind::Blob, b"hello\n").unwrap();
        assert_eq!(hello.hex(), "ce013625030ba8dba906f756967f9e9ca394464a");
        let empty = pack.add(Kind::Blob, b"").unwrap();
        assert_eq!(empty.hex(), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        // The empty tree git knows by heart.
        let tree = pack.add_tree(&BTreeMap::new()).unwrap();
        assert_eq!(tree.hex(), "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
        // Added again: the same id, not a second entry.
        assert_eq!(pack.add(Kind::Blob, b"hello\n").unwrap(), hello);
        assert_eq!(pack.entries.len(), 3);
    }

    #[test]
    fn a_directory_sorts_as_if_its_name_ended_in_a_slash() {
        let mut pack = Pack::default();
        let blob = pack.add(Kind::Blob, b"x").unwrap();
        let files = BTreeMap::from([
            ("a.rs".to_string(), (blob, 0o100644)),
            ("a/b.rs".to_string(), (blob, 0o100644)),
            ("a-b".to_string(), (blob, 0o100755)),
        ]);
        let repo_dir =
            std::env::temp_dir().join(format!("archscaffold-pack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&repo_dir);
        let repo = git2::Repository::init_bare(&repo_dir).unwrap();
        let root = pack.add_tree(&files).unwrap();
        pack.write(&repo_dir.join("objects/pack")).unwrap();
        // libgit2 finds the tree through our index and inflates it from our pack.
        let tree = repo
            .find_tree(git2::Oid::from_bytes(&root.0).unwrap())
            .unwrap();
        let listed: Vec<String> = tree.iter().map(|e| e.name().unwrap().to_string()).collect();
        assert_eq!(listed, ["a-b", "a.rs", "a"]);
        assert_eq!(tree.get_name("a-b").unwrap().filemode(), 0o100755);
        let _ = fs::remove_dir_all(&repo_dir);
    }
}

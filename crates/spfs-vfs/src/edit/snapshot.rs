//! An editable view's inode table as bytes, for the next service process.
//!
//! The kernel knows an editable view's entries by the inode numbers this
//! view handed out ([`super`]); a service that hands its connection over
//! to a new process writes each editable view's table (every inode the
//! kernel may hold: its number, its names, the references the kernel
//! holds) and the new process reads it back, so every number still names
//! the same entry. What each entry is (its directory make-up, its open
//! upper file) is found again on first use, as after a lookup.

use std::collections::HashMap;

use super::{Editable, Inode, ROOT_INODE};

const MAGIC: &[u8; 8] = b"SPFSINO1";

/// Why a table could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("the inode table is damaged")]
pub struct Damaged;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Damaged> {
        if self.0.len() < n {
            return Err(Damaged);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, Damaged> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| Damaged)?,
        ))
    }
    fn u64(&mut self) -> Result<u64, Damaged> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| Damaged)?,
        ))
    }
}

impl Editable {
    /// The inode table, as bytes.
    pub fn export_inodes(&self) -> Vec<u8> {
        let st = self.lock();
        let mut out = Vec::with_capacity(16 + st.inodes.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&st.next.to_le_bytes());
        out.extend_from_slice(&(st.inodes.len() as u32).to_le_bytes());
        for (ino, node) in &st.inodes {
            out.extend_from_slice(&ino.to_le_bytes());
            out.extend_from_slice(&node.lookups.to_le_bytes());
            out.extend_from_slice(&(node.links.len() as u32).to_le_bytes());
            for (parent, name) in &node.links {
                out.extend_from_slice(&parent.to_le_bytes());
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(name);
            }
        }
        out
    }

    /// Take over the inode table `bytes` (of this view, written by
    /// [`Editable::export_inodes`] in a previous service process).
    pub fn import_inodes(&self, bytes: &[u8]) -> Result<(), Damaged> {
        let mut r = Reader(bytes);
        if r.take(8)? != MAGIC {
            return Err(Damaged);
        }
        let next = r.u32()?;
        let count = r.u32()?;
        let mut inodes = HashMap::new();
        let mut names = HashMap::new();
        for _ in 0..count {
            let ino = r.u32()?;
            let lookups = r.u64()?;
            let nlinks = r.u32()?;
            let mut links = Vec::new();
            for _ in 0..nlinks {
                let parent = r.u32()?;
                let len = r.u32()? as usize;
                let name: Box<[u8]> = r.take(len)?.into();
                names.insert((parent, name.clone()), ino);
                links.push((parent, name));
            }
            if ino >= next && ino != ROOT_INODE {
                return Err(Damaged);
            }
            inodes.insert(
                ino,
                Inode {
                    links,
                    lookups,
                    dir: None,
                },
            );
        }
        if !inodes.contains_key(&ROOT_INODE) {
            return Err(Damaged);
        }
        let mut st = self.lock();
        st.inodes = inodes;
        st.names = names;
        st.next = next;
        st.files.clear();
        Ok(())
    }
}

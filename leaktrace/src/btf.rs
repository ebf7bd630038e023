//! Field offsets of the running kernel's structures, from its BTF
//! (`/sys/kernel/btf/vmlinux`): what an eBPF program handed a kernel pointer
//! needs to read a field without CO-RE relocations.
use std::path::Path;

use thiserror::Error;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read {0}: {1} (a kernel built with CONFIG_DEBUG_INFO_BTF has it)")]
    Read(&'static str, std::io::Error),
    #[error("damaged BTF: {0}")]
    Damaged(&'static str),
    #[error("no field {1} in struct {0}")]
    NoField(&'static str, &'static str),
}

/// Byte offset of `field` in the running kernel's `struct name`, looked for
/// in anonymous members too.
pub fn field_offset(name: &'static str, field: &'static str) -> Result<u32, BtfError> {
    let data = std::fs::read(Path::new(VMLINUX)).map_err(|e| BtfError::Read(VMLINUX, e))?;
    field_offset_in(&data, name, field)
}

/// [`field_offset`] in the BTF blob `data`.
pub fn field_offset_in(
    data: &[u8],
    name: &'static str,
    field: &'static str,
) -> Result<u32, BtfError> {
    Btf::parse(data)?.field_offset(name, field)
}

/// The type and string sections of a BTF blob, each type's start indexed.
struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Offset in `types` of type id i + 1 (id 0 is void).
    starts: Vec<usize>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let damaged = BtfError::Damaged;
        let magic = data.get(..2).ok_or(damaged("too short"))?;
        if u16::from_le_bytes([magic[0], magic[1]]) != MAGIC {
            return Err(damaged("not little-endian BTF"));
        }
        let field = |at| {
            u32_at(data, at)
                .map(|v| v as usize)
                .ok_or(damaged("header"))
        };
        let header = field(4)?;
        let section = |off: usize, len: usize| {
            let start = header.checked_add(off).ok_or(damaged("section"))?;
            data.get(start..start.checked_add(len).ok_or(damaged("section"))?)
                .ok_or(damaged("section past the end"))
        };
        let types = section(field(8)?, field(12)?)?;
        let strings = section(field(16)?, field(20)?)?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < types.len() {
            starts.push(at);
            let info = u32_at(types, at + 4).ok_or(damaged("type"))?;
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                1 | 14 | 17 => 4,             // int, var, decl_tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
                6 | 13 => 8 * vlen,           // enum, func_proto
                0 | 2 | 7..=12 | 16 | 18 => 0,
                _ => return Err(damaged("unknown type kind")),
            };
            at += 12 + extra;
        }
        if at != types.len() {
            return Err(damaged("type section"));
        }
        Ok(Btf {
            types,
            strings,
            starts,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// (name offset, kind, vlen, start) of type `id`.
    fn header(&self, id: u32) -> Option<(u32, u32, usize, usize)> {
        let start = *self.starts.get((id as usize).checked_sub(1)?)?;
        let info = u32_at(self.types, start + 4)?;
        Some((
            u32_at(self.types, start)?,
            (info >> 24) & 0x1f,
            (info & 0xffff) as usize,
            start,
        ))
    }

    fn field_offset(&self, name: &'static str, field: &'static str) -> Result<u32, BtfError> {
        let id = (1..=self.starts.len() as u32)
            .find(|&id| {
                self.header(id).is_some_and(|(n, kind, ..)| {
                    kind == KIND_STRUCT && self.name(n) == name.as_bytes()
                })
            })
            .ok_or(BtfError::NoField(name, field))?;
        self.find(id, field.as_bytes(), 0, 0)
            .map(|bits| bits / 8)
            .ok_or(BtfError::NoField(name, field))
    }

    /// Bit offset of `field` in struct or union `id`, descending into
    /// anonymous members (`depth` bounds that on damaged data).
    fn find(&self, id: u32, field: &[u8], base: u32, depth: u32) -> Option<u32> {
        let (_, kind, vlen, start) = self.header(id)?;
        if !(kind == KIND_STRUCT || kind == KIND_UNION) || depth > 8 {
            return None;
        }
        let bitfields = u32_at(self.types, start + 4)? >> 31 == 1;
        for m in 0..vlen {
            let at = start + 12 + 12 * m;
            let (name, ty, offset) = (
                u32_at(self.types, at)?,
                u32_at(self.types, at + 4)?,
                u32_at(self.types, at + 8)?,
            );
            let offset = base
                + if bitfields {
                    offset & 0xff_ffff
                } else {
                    offset
                };
            if name != 0 && self.name(name) == field {
                return Some(offset);
            }
            if name == 0
                && let Some(found) = self.find(ty, field, offset, depth + 1)
            {
                return Some(found);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_has_task_struct_tgid_right_after_pid() {
        let Ok(tgid) = field_offset("task_struct", "tgid") else {
            return; // no BTF in this kernel: nothing to check
        };
        let pid = field_offset("task_struct", "pid").unwrap();
        assert_eq!(tgid, pid + 4);
    }

    #[test]
    fn damaged_btf_is_refused_not_trusted() {
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut data = std::fs::read(VMLINUX).unwrap_or_default();
        if data.len() > 64 {
            data.truncate(data.len() / 2);
            assert!(Btf::parse(&data).is_err());
        }
    }
}

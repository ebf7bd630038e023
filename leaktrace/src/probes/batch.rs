//! Reading a whole eBPF hash map with `BPF_MAP_LOOKUP_BATCH`: one syscall per
//! few thousand entries, where aya's iteration takes two per entry (100k sites
//! read every second cost a core's worth of system time that way).
use std::os::fd::{AsFd, AsRawFd};

use aya::{Pod, maps::MapData};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call.
const CHUNK: usize = 4096;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `each` with every entry of hash map `map`. Entries added or removed
/// meanwhile may be seen or not, as with iteration.
pub fn for_each<K: Pod, V: Pod>(
    map: &MapData,
    mut each: impl FnMut(&K, &V),
) -> std::io::Result<()> {
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    // The position the kernel hands back: a bucket index for hash maps.
    let (mut from, mut to) = (0u64, 0u64);
    let mut first = true;
    let mut chunk = CHUNK;
    loop {
        keys.reserve_exact(chunk);
        values.reserve_exact(chunk);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const from) as u64 },
            out_batch: (&raw mut to) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the kernel writes at most `count` keys and values into
        // buffers of that capacity, and 4 bytes of position into `to`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (r < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(chunk);
        // SAFETY: the kernel filled the first `n` of each (Pod: any bytes are valid).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        for (k, v) in keys.iter().zip(&values) {
            each(k, v);
        }
        keys.clear();
        values.clear();
        match err {
            None => {}
            // The end of the map.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // One bucket holds more than `chunk` entries: ask for more.
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < 1 << 20 => {
                chunk *= 2;
                continue;
            }
            Some(e) => return Err(e),
        }
        from = to;
        first = false;
    }
}

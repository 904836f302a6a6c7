//! Policy swaps into real kernel maps (created here, as root, shaped as
//! the BPF objects declare them), with a map delete made to fail: after
//! every swap the slot in force holds exactly the installed policy's
//! entries — nothing another policy left — and a slot that could not be
//! emptied is emptied before its next use.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::mem::size_of;
use std::sync::Arc;

use libbpf_rs::libbpf_sys::{BPF_F_NO_PREALLOC, bpf_map_create_opts};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use tyr_common::policy::compile::{CompiledPolicy, MAX_GLOBS, MAX_LISTS, compile};
use tyr_common::policy::parse_policy;

use super::{PolicyInstaller, layout, net_list, path_list};
use crate::bpf::records::{
    tyr_glob, tyr_net_candidates, tyr_net_key4, tyr_net_key6, tyr_path_candidates, tyr_path_key, tyr_policy_slot,
};
use crate::capture::{NetPolicyMaps, PathPolicyMaps, PolicyMaps};

thread_local! {
    /// Fault injection: `Some(n)` makes the n-th key delete from now fail.
    static FAIL_DELETE: Cell<Option<u32>> = const { Cell::new(None) };
}

/// The seam `delete_key` calls: the planned delete fails, the others run.
pub(super) fn injected_delete_failure() -> Result<(), libbpf_rs::Error> {
    FAIL_DELETE.with(|plan| match plan.get() {
        Some(1) => {
            plan.set(None);
            Err(libbpf_rs::Error::from(std::io::Error::other("injected delete failure")))
        }
        Some(n) => {
            plan.set(Some(n - 1));
            Ok(())
        }
        None => Ok(()),
    })
}

fn fail_nth_delete(n: u32) {
    FAIL_DELETE.with(|plan| plan.set(Some(n)));
}

/// A map as the BPF objects declare it (tries are not preallocated).
fn map(ty: MapType, key: usize, value: usize, entries: u32) -> MapHandle {
    let flags = if ty == MapType::LpmTrie { BPF_F_NO_PREALLOC } else { 0 };
    let opts =
        bpf_map_create_opts { sz: size_of::<bpf_map_create_opts>() as _, map_flags: flags, ..Default::default() };
    MapHandle::create(ty, None::<&str>, key as u32, value as u32, entries, &opts).expect("create a BPF map (root)")
}

fn policy_maps() -> PolicyMaps {
    let trie = |key: usize| map(MapType::LpmTrie, key, size_of::<u32>(), 4096);
    let array = |value: usize, entries: usize| map(MapType::Array, size_of::<u32>(), value, entries as u32);
    PolicyMaps {
        active: array(size_of::<u32>(), 1),
        slots: array(size_of::<tyr_policy_slot>(), 2),
        net: Some(NetPolicyMaps {
            v4: [trie(size_of::<tyr_net_key4>()), trie(size_of::<tyr_net_key4>())],
            v6: [trie(size_of::<tyr_net_key6>()), trie(size_of::<tyr_net_key6>())],
            lists: [
                array(size_of::<tyr_net_candidates>(), MAX_LISTS),
                array(size_of::<tyr_net_candidates>(), MAX_LISTS),
            ],
        }),
        path: Some(PathPolicyMaps {
            tries: [trie(size_of::<tyr_path_key>()), trie(size_of::<tyr_path_key>())],
            lists: [
                array(size_of::<tyr_path_candidates>(), MAX_LISTS),
                array(size_of::<tyr_path_candidates>(), MAX_LISTS),
            ],
            globs: [array(size_of::<tyr_glob>(), MAX_GLOBS), array(size_of::<tyr_glob>(), MAX_GLOBS)],
        }),
        inode_ids: None,
    }
}

/// A policy of connect and file rules (base and a `cursor` overlay) whose
/// entries are `tag`'s own, plus a few every tag shares.
fn policy(tag: u8, version: i64) -> (Arc<CompiledPolicy>, Arc<tyr_common::policy::PolicySet>) {
    let mut yaml = format!("name: swap-{tag}\ndefault_verdict: allow\nrules:\n");
    for i in 0..6 {
        yaml += &format!(
            "  - name: r{tag}-{i}\n    action: net_connect\n    cidr_deny: [\"10.{tag}.{i}.0/24\", \"fd{tag:02x}::{i}:0/112\"]\n    verdict: deny\n\
             \x20 - name: f{tag}-{i}\n    action: file_read\n    paths: [\"/srv/{tag}/{i}/\", \"/etc/{tag}-{i}.conf\", \"/home/*/.{tag}{i}/*\"]\n    verdict: alert\n"
        );
    }
    yaml += "  - name: shared\n    action: file_write\n    paths: [\"/etc/\"]\n    verdict: deny\n";
    yaml += &format!(
        "overlays:\n  cursor:\n    - name: c{tag}\n      action: exec\n      paths: [\"/opt/{tag}/bin/*\"]\n      verdict: deny\n"
    );
    let set = parse_policy("swap.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    (Arc::new(compile(&set, version).expect("compiles")), Arc::new(set))
}

/// What one slot's maps hold: trie entries, and the list entries that are
/// not empty.
#[derive(Debug, Default, PartialEq, Eq)]
struct Slot {
    net4: BTreeMap<Vec<u8>, Vec<u8>>,
    net6: BTreeMap<Vec<u8>, Vec<u8>>,
    paths: BTreeMap<Vec<u8>, Vec<u8>>,
    net_lists: BTreeMap<u32, Vec<u8>>,
    path_lists: BTreeMap<u32, Vec<u8>>,
}

fn trie_entries(map: &MapHandle) -> BTreeMap<Vec<u8>, Vec<u8>> {
    map.keys()
        .map(|key| {
            let value = map.lookup(&key, MapFlags::ANY).expect("lookup").expect("listed key");
            (key, value)
        })
        .collect()
}

fn non_empty(map: &MapHandle) -> BTreeMap<u32, Vec<u8>> {
    (0..MAX_LISTS as u32)
        .filter_map(|index| {
            let value = map.lookup(&index.to_ne_bytes(), MapFlags::ANY).expect("lookup").expect("array entry");
            value.iter().any(|b| *b != 0).then_some((index, value))
        })
        .collect()
}

/// What the kernel's maps hold in `slot`.
fn read_slot(maps: &PolicyMaps, slot: usize) -> Slot {
    let (net, path) = (maps.net.as_ref().expect("net maps"), maps.path.as_ref().expect("path maps"));
    Slot {
        net4: trie_entries(&net.v4[slot]),
        net6: trie_entries(&net.v6[slot]),
        paths: trie_entries(&path.tries[slot]),
        net_lists: non_empty(&net.lists[slot]),
        path_lists: non_empty(&path.lists[slot]),
    }
}

fn bytes<T: plain::Plain>(value: &T) -> Vec<u8> {
    // SAFETY: the candidate lists are Plain repr(C) structs of integers.
    unsafe { plain::as_bytes(value) }.to_vec()
}

/// What a slot holding `policy` must hold, derived from the compiled
/// entries (not from what the installer recorded).
fn expected(policy: &CompiledPolicy) -> Slot {
    let mut slot = Slot::default();
    for prefix in &policy.net_prefixes {
        let key = layout::net_key(prefix.class, prefix.cidr.prefix, prefix.cidr.addr);
        let trie = if prefix.cidr.addr.is_ipv4() { &mut slot.net4 } else { &mut slot.net6 };
        trie.insert(key, prefix.list.to_ne_bytes().to_vec());
    }
    for prefix in &policy.path_prefixes {
        slot.paths
            .insert(layout::path_key(prefix.class, prefix.action, &prefix.bytes), prefix.list.to_ne_bytes().to_vec());
    }
    slot.net_lists = (0..).zip(&policy.net_lists).map(|(i, list)| (i, bytes(&net_list(list)))).collect();
    slot.path_lists = (0..).zip(&policy.path_lists).map(|(i, list)| (i, bytes(&path_list(list)))).collect();
    slot
}

/// The slot the switch names, and the version that slot says it holds.
fn in_force(maps: &PolicyMaps) -> (usize, u64) {
    let switch = maps.active.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).expect("lookup").expect("switch");
    let slot = u32::from_ne_bytes(switch.try_into().expect("u32")) as usize - 1;
    let meta = maps.slots.lookup(&(slot as u32).to_ne_bytes(), MapFlags::ANY).expect("lookup").expect("slot");
    let meta: &tyr_policy_slot = plain::from_bytes(&meta).expect("slot meta");
    (slot, meta.version)
}

/// The policy in force is exactly `policy`'s entries, nothing else.
fn assert_in_force(installer: &PolicyInstaller, policy: &CompiledPolicy, step: &str) {
    let maps = &installer.maps;
    let (slot, version) = in_force(maps);
    assert_eq!(version, policy.version as u64, "{step}: version in force");
    let held = read_slot(maps, slot);
    let want = expected(policy);
    assert!(!want.net4.is_empty() && !want.net6.is_empty() && !want.paths.is_empty(), "{step}: a policy with entries");
    assert_eq!(held, want, "{step}: the slot in force holds the policy and nothing else");
}

#[test]
fn a_failed_delete_leaves_nothing_stale_in_any_later_policy() {
    let mut installer = PolicyInstaller::new(policy_maps());
    let (a, b, c) = (policy(1, 1), policy(2, 2), policy(3, 3));

    installer.install(Arc::clone(&a.0), a.1).expect("install A");
    assert_in_force(&installer, &a.0, "A");
    assert_eq!(read_slot(&installer.maps, 1), Slot::default(), "A: the other slot is empty");

    // B goes into slot 1; emptying A's slot 0 then fails at its 3rd delete.
    fail_nth_delete(3);
    installer.install(Arc::clone(&b.0), b.1).expect("install B");
    assert_in_force(&installer, &b.0, "B");
    assert_eq!(installer.clear_failures, 1, "B: the failed clear is counted");
    let left = read_slot(&installer.maps, 0);
    assert_eq!(left.net4.len() + left.net6.len() + left.paths.len(), 1, "B: one of A's entries is left: {left:?}");

    // C goes into slot 0: A's leftover goes first.
    installer.install(Arc::clone(&c.0), c.1).expect("install C");
    assert_in_force(&installer, &c.0, "C");
    assert_eq!(read_slot(&installer.maps, 1), Slot::default(), "C: B's slot is emptied");
    assert_eq!(installer.clear_failures, 1);
}

#[test]
fn an_install_into_a_slot_that_cannot_be_emptied_fails_and_the_policy_in_force_stays() {
    let mut installer = PolicyInstaller::new(policy_maps());
    let (a, b, c) = (policy(4, 1), policy(5, 2), policy(6, 3));
    installer.install(Arc::clone(&a.0), a.1).expect("install A");
    fail_nth_delete(1);
    installer.install(Arc::clone(&b.0), b.1).expect("install B");

    // Emptying A's leftover fails again: C is refused, B stays whole.
    fail_nth_delete(1);
    assert!(installer.install(Arc::clone(&c.0), Arc::clone(&c.1)).is_err(), "C refused");
    assert_eq!(installer.clear_failures, 2);
    assert_in_force(&installer, &b.0, "B after C was refused");

    installer.install(Arc::clone(&c.0), c.1).expect("install C again");
    assert_in_force(&installer, &c.0, "C");
    assert_eq!(read_slot(&installer.maps, 1), Slot::default(), "C: B's slot is emptied");
}

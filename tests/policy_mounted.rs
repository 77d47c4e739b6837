//! A ConfigMap mounted as a volume, updated exactly the way kubelet's AtomicWriter does it:
//! a new timestamped directory `..2026_11_23_...`, a `..data_tmp` symlink to it renamed over
//! `..data`, visible names as symlinks `x.cedar -> ..data/x.cedar`, the old directory removed.
mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cedar_policy::{Authorizer, Context, Decision, EntityUid, Request};
use portcullis::config::EmptyPolicy;
use portcullis::policy::{PolicySnapshot, PolicyStore, files};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use common::eventually;

const SCHEMA: &str = r#"
    entity User;
    entity Route;
    action "GET" appliesTo { principal: [User], resource: [Route] };
"#;

fn permit(user: &str) -> String {
    format!("@id(\"{user}-get\") permit(principal == User::\"{user}\", action == Action::\"GET\", resource);\n")
}

/// A kubelet-managed ConfigMap volume.
struct Volume {
    dir: PathBuf,
    generation: AtomicUsize,
}

impl Volume {
    fn new(dir: &Path, files: &[(&str, &str)]) -> Self {
        let v = Self { dir: dir.to_owned(), generation: AtomicUsize::new(0) };
        let ts = v.write_timestamped(files);
        symlink(&ts, dir.join("..data")).expect("..data");
        for (name, _) in files {
            symlink(format!("..data/{name}"), dir.join(name)).expect("visible symlink");
        }
        v
    }

    /// `..2026_11_23_10_00_00.<generation>` with every key as a regular file.
    fn write_timestamped(&self, files: &[(&str, &str)]) -> String {
        let g = self.generation.fetch_add(1, Ordering::SeqCst);
        let name = format!("..2026_11_23_10_{:02}_{:02}.{:09}", g / 60 % 60, g % 60, g + 1);
        let path = self.dir.join(&name);
        std::fs::create_dir(&path).expect("timestamped dir");
        for (key, text) in files {
            std::fs::write(path.join(key), text).expect("key file");
        }
        name
    }

    fn current(&self) -> String {
        std::fs::read_link(self.dir.join("..data")).expect("..data").to_string_lossy().into_owned()
    }

    /// kubelet's update: new dir, `..data_tmp` renamed over `..data`, visible names fixed up,
    /// old dir removed.
    fn swap(&self, files: &[(&str, &str)]) {
        let old = self.current();
        let ts = self.write_timestamped(files);
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("atomic swap");
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).expect("new visible symlink");
            }
        }
        // Keys no longer in the ConfigMap lose their visible symlink.
        for entry in std::fs::read_dir(&self.dir).expect("list").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !files.iter().any(|(k, _)| *k == name) {
                std::fs::remove_file(entry.path()).expect("remove stale symlink");
            }
        }
        std::fs::remove_dir_all(self.dir.join(old)).expect("remove old dir");
    }
}

fn allows(store: &PolicyStore, user: &str) -> bool {
    let Some(snap) = store.load() else { return false };
    let principal = EntityUid::from_str(&format!("User::\"{user}\"")).expect("uid");
    let action = EntityUid::from_str("Action::\"GET\"").expect("uid");
    let resource = EntityUid::from_str("Route::\"r\"").expect("uid");
    let Ok(req) = Request::new(principal, action, resource, Context::empty(), Some(snap.engine.schema())) else {
        return false;
    };
    Authorizer::new().is_authorized(&req, snap.engine.policies(), snap.engine.entities()).decision() == Decision::Allow
}

fn store(on_empty: EmptyPolicy) -> Arc<PolicyStore> {
    Arc::new(PolicyStore::new(on_empty, &mut Registry::default()))
}

#[test]
fn only_the_current_timestamped_directory_is_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vol = Volume::new(tmp.path(), &[("schema.cedarschema", SCHEMA), ("policy.cedar", &permit("alice"))]);
    // kubelet is half-way through writing the next update: the new directory exists, its
    // files are partial, `..data` has not moved yet. Nothing of it may be read.
    let next = tmp.path().join("..2026_11_23_11_00_00.999999999");
    std::fs::create_dir(&next).expect("dir");
    std::fs::write(next.join("policy.cedar"), "permit(principal ==").expect("partial");
    std::fs::write(next.join("extra.cedar"), "garbage").expect("partial");

    let docs = files::read_dir(tmp.path()).expect("read");
    let names: Vec<&str> = docs.iter().map(|d| d.origin.as_str()).collect();
    assert_eq!(names, ["policy.cedar", "schema.cedarschema"]);
    assert_eq!(docs[0].text, permit("alice"));
    assert!(vol.current().starts_with("..2026_11_23_"));
}

#[test]
fn reads_racing_with_swaps_always_see_one_whole_update() {
    // Two versions whose files only validate together: a read that mixed a schema from one
    // swap with a policy from the other would fail to build.
    let a_schema = "entity Alpha; entity Route; action \"GET\" appliesTo { principal: [Alpha], resource: [Route] };";
    let b_schema = "entity Beta; entity Route; action \"GET\" appliesTo { principal: [Beta], resource: [Route] };";
    let a_policy = "permit(principal == Alpha::\"x\", action, resource);";
    let b_policy = "permit(principal == Beta::\"x\", action, resource);";
    let a: [(&str, &str); 2] = [("a.cedar", a_policy), ("z.cedarschema", a_schema)];
    let b: [(&str, &str); 2] = [("a.cedar", b_policy), ("z.cedarschema", b_schema)];

    let tmp = tempfile::tempdir().expect("tempdir");
    let vol = Arc::new(Volume::new(tmp.path(), &a));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (vol, done) = (vol.clone(), done.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !done.load(Ordering::Relaxed) {
                vol.swap(if i.is_multiple_of(2) { &b } else { &a });
                i += 1;
            }
            i
        })
    };
    let mut built = 0;
    for _ in 0..150 {
        match files::read_dir(tmp.path()) {
            Ok(docs) => {
                let snap = PolicySnapshot::build(&docs, "race");
                assert!(snap.is_ok(), "a read mixed two updates: {:?}", snap.err());
                built += 1;
            }
            // Only acceptable failure: the directory vanished under us more often than we
            // retry; that is a refused read (last good set stays), never a mixed one.
            Err(errs) => assert!(errs.iter().all(|e| e.message.contains("cannot")), "{errs:?}"),
        }
    }
    done.store(true, Ordering::Relaxed);
    let swaps = writer.join().expect("writer");
    assert!(swaps > 10, "the writer really raced the reader ({swaps} swaps)");
    assert!(built > 50, "most reads succeed ({built}/150)");
}

#[tokio::test]
async fn a_kubelet_swap_is_picked_up_and_a_broken_one_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vol = Volume::new(tmp.path(), &[("schema.cedarschema", SCHEMA), ("policy.cedar", &permit("alice"))]);
    let store = store(EmptyPolicy::DenyAll);
    files::load_into(tmp.path(), &store).expect("first load");
    assert!(allows(&store, "alice"));
    let (stop, rx) = watch::channel(false);
    let task = files::spawn_watch(tmp.path().to_owned(), store.clone(), Duration::from_millis(50), rx).expect("watch");

    // A new key and a changed key, in one atomic swap.
    vol.swap(&[("schema.cedarschema", SCHEMA), ("policy.cedar", &permit("bob")), ("carol.cedar", &permit("carol"))]);
    eventually(Duration::from_secs(15), "bob and carol allowed", async || {
        allows(&store, "bob") && allows(&store, "carol")
    })
    .await;
    assert!(!allows(&store, "alice"));
    let good = store.status().version;

    // A broken update: refused, the last good set stays, and the error names the key and line.
    vol.swap(&[("schema.cedarschema", SCHEMA), ("policy.cedar", &format!("{}permit(oops", permit("mallory")))]);
    eventually(Duration::from_secs(15), "rejection", async || store.status().last_error.is_some()).await;
    let err = store.status().last_error.unwrap_or_default();
    assert!(err.contains("policy.cedar:2:"), "{err}");
    assert_eq!(store.status().version, good);
    assert!(allows(&store, "bob") && allows(&store, "carol"));
    assert!(!allows(&store, "mallory"));

    // Every key removed from the ConfigMap: deny-all, not allow-all.
    vol.swap(&[]);
    eventually(Duration::from_secs(15), "deny-all", async || store.status().deny_all).await;
    assert!(!allows(&store, "bob"));

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("watch stops").expect("no panic");
}

//! One copy of each desired configuration in the controller's memory (issue 17). Every VM of a
//! profile is asked for the same `EffectiveConfiguration` (~1 KB with its strings); the VM cache
//! held one per VM. Configurations coming from the VM watch and from resolved profiles are
//! swapped for the one copy already held, when equal in full (not only by hash: a status edited
//! by hand keeps what it says).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use crate::api::{EffectiveConfiguration, VirtualMachine};

/// Configurations by hash, held weakly: one goes when no VM and no write uses it.
#[derive(Default)]
pub struct Interner {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_hash: HashMap<String, Weak<EffectiveConfiguration>>,
    /// Entries after the last sweep of dead ones.
    after_sweep: usize,
}

static CONFIGURATIONS: LazyLock<Interner> = LazyLock::new(Interner::default);

/// The process's one copy of `c` (see `Interner::share`).
pub fn configuration(c: Arc<EffectiveConfiguration>) -> Arc<EffectiveConfiguration> {
    CONFIGURATIONS.share(c)
}

/// A VM from the watch, its desired configuration shared.
pub fn vm(vm: &mut VirtualMachine) {
    CONFIGURATIONS.share_in(vm);
}

impl Interner {
    /// The copy already held when it equals `c`, else `c` (held from now on).
    pub fn share(&self, c: Arc<EffectiveConfiguration>) -> Arc<EffectiveConfiguration> {
        let Ok(mut t) = self.table.lock() else {
            return c;
        };
        if let Some(held) = t.by_hash.get(&c.hash).and_then(Weak::upgrade)
            && (Arc::ptr_eq(&held, &c) || *held == *c)
        {
            return held;
        }
        t.by_hash.insert(c.hash.clone(), Arc::downgrade(&c));
        // Sweep configurations no one uses any more when the table doubled since the last sweep.
        if t.by_hash.len() > 2 * t.after_sweep.max(32) {
            t.by_hash.retain(|_, w| w.strong_count() > 0);
            t.after_sweep = t.by_hash.len();
        }
        c
    }

    pub fn share_in(&self, vm: &mut VirtualMachine) {
        let Some(desired) = vm.status.as_mut().and_then(|s| s.desired.as_mut()) else {
            return;
        };
        if let Some(c) = desired.configuration.take() {
            desired.configuration = Some(self.share(c));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table
            .lock()
            .map(|t| t.by_hash.len())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigurationProfileSpec, Environment};
    use crate::logic::resolve::resolve;

    fn config(env: Environment) -> Arc<EffectiveConfiguration> {
        Arc::new(resolve(&ConfigurationProfileSpec::with_defaults(env)))
    }

    #[test]
    fn equal_configurations_are_one_copy() {
        let i = Interner::default();
        let a = i.share(config(Environment::Production));
        let b = i.share(config(Environment::Production));
        assert!(Arc::ptr_eq(&a, &b));
        let d = i.share(config(Environment::DevTest));
        assert!(
            !Arc::ptr_eq(&a, &d),
            "another configuration is its own copy"
        );
    }

    #[test]
    fn a_configuration_edited_under_the_same_hash_keeps_what_it_says() {
        let i = Interner::default();
        let a = i.share(config(Environment::Production));
        let mut edited = (*a).clone();
        edited.services.monitoring.enabled = !edited.services.monitoring.enabled;
        let e = i.share(Arc::new(edited.clone()));
        assert!(!Arc::ptr_eq(&a, &e));
        assert_eq!(*e, edited, "not swapped for the copy with the same hash");
    }

    #[test]
    fn a_vm_from_the_watch_shares_its_profiles_configuration() {
        let i = Interner::default();
        let held = i.share(config(Environment::DevTest));
        let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "automend.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": { "name": "web-1", "namespace": "fleet" },
            "spec": {
                "os": { "type": "Linux", "image":
                    { "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server" } },
                "placement": { "region": "westeurope" },
            },
            "status": { "desired": { "profile": "p", "configuration": *held } }
        }))
        .expect("vm");
        i.share_in(&mut vm);
        let c = vm
            .status
            .and_then(|s| s.desired)
            .and_then(|d| d.configuration)
            .expect("configuration");
        assert!(Arc::ptr_eq(&c, &held));
    }

    #[test]
    fn configurations_no_one_uses_are_swept() {
        let i = Interner::default();
        let keep = i.share(config(Environment::Production));
        for n in 0..200 {
            let mut c = (*config(Environment::DevTest)).clone();
            c.hash = format!("gone-{n}");
            drop(i.share(Arc::new(c)));
        }
        assert!(i.len() <= 65, "{} entries held", i.len());
        let again = i.share(config(Environment::Production));
        assert!(Arc::ptr_eq(&keep, &again), "a configuration in use stays");
    }
}

//! The image catalog (DESIGN.md §6): which images support AutomaticByPlatform patching and which
//! Windows Server Azure Edition capabilities (Hotpatch, SMB over QUIC, Extended Network) each has.
//! Built in, and replaceable by a YAML file (the chart's `imageCatalog` value).

use serde::{Deserialize, Serialize};

use crate::api::{Capability, ImageReference, OsType, PatchMode, VirtualMachineSpec};

/// One catalog entry. `sku` may end in `*` to match a family of SKUs. Matching ignores case, as
/// cloud marketplaces do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatalogImage {
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub os: OsType,
    /// Whether the image supports AutomaticByPlatform (platform-orchestrated) patching.
    #[serde(default)]
    pub automatic_by_platform: bool,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageCatalog {
    pub images: Vec<CatalogImage>,
}

/// Why a VM's spec does not fit its image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageProblem {
    /// AutomaticByPlatform was asked for on an image the catalog does not list as supporting it.
    PatchModeUnsupported { image: String },
    /// The image lacks requested capabilities.
    CapabilityMissing {
        image: String,
        missing: Vec<Capability>,
    },
}

impl std::fmt::Display for ImageProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageProblem::PatchModeUnsupported { image } => write!(
                f,
                "patchMode AutomaticByPlatform is not supported on image {image}; supported images are listed in the image catalog (use ImageDefault on Linux or AutomaticByOS on Windows)"
            ),
            ImageProblem::CapabilityMissing { image, missing } => {
                let names: Vec<String> = missing.iter().map(|c| format!("{c:?}")).collect();
                write!(
                    f,
                    "image {image} lacks the requested capabilities {}; they need a Windows Server Azure Edition image that has them (see the image catalog)",
                    names.join(", ")
                )
            }
        }
    }
}

fn entry(
    publisher: &str,
    offer: &str,
    sku: &str,
    os: OsType,
    capabilities: &[Capability],
) -> CatalogImage {
    CatalogImage {
        publisher: publisher.into(),
        offer: offer.into(),
        sku: sku.into(),
        os,
        automatic_by_platform: true,
        capabilities: capabilities.to_vec(),
    }
}

impl Default for ImageCatalog {
    /// The seed's supported images, extended with current distributions, and the seed's Azure
    /// Edition capability matrix.
    fn default() -> Self {
        use Capability::*;
        use OsType::*;
        let w = "MicrosoftWindowsServer";
        let ws = "WindowsServer";
        ImageCatalog {
            images: vec![
                entry("Canonical", "UbuntuServer", "18.04-LTS", Linux, &[]),
                entry(
                    "Canonical",
                    "0001-com-ubuntu-server-focal",
                    "20_04-lts*",
                    Linux,
                    &[],
                ),
                entry(
                    "Canonical",
                    "0001-com-ubuntu-server-jammy",
                    "22_04-lts*",
                    Linux,
                    &[],
                ),
                entry("Canonical", "ubuntu-24_04-lts", "server*", Linux, &[]),
                entry("RedHat", "RHEL", "7*", Linux, &[]),
                entry("RedHat", "RHEL", "8*", Linux, &[]),
                entry("RedHat", "RHEL", "9*", Linux, &[]),
                entry("Debian", "debian-11", "11*", Linux, &[]),
                entry("Debian", "debian-12", "12*", Linux, &[]),
                entry("Debian", "debian-13", "13*", Linux, &[]),
                // The dnf family the agent supports besides RHEL.
                entry("resf", "rockylinux-x86_64", "8*", Linux, &[]),
                entry("resf", "rockylinux-x86_64", "9*", Linux, &[]),
                entry("almalinux", "almalinux-x86_64", "8*", Linux, &[]),
                entry("almalinux", "almalinux-x86_64", "9*", Linux, &[]),
                entry("Oracle", "Oracle-Linux", "ol8*", Linux, &[]),
                entry("Oracle", "Oracle-Linux", "ol9*", Linux, &[]),
                entry("Fedora", "fedora-cloud", "4*", Linux, &[]),
                entry(w, ws, "2012-R2-Datacenter", Windows, &[]),
                entry(w, ws, "2016-Datacenter", Windows, &[]),
                entry(w, ws, "2016-Datacenter-Server-Core", Windows, &[]),
                entry(w, ws, "2019-Datacenter", Windows, &[]),
                entry(w, ws, "2019-Datacenter-Core", Windows, &[]),
                entry(w, ws, "2022-datacenter", Windows, &[]),
                entry(w, ws, "2022-datacenter-core", Windows, &[]),
                entry(
                    w,
                    ws,
                    "2019-datacenter-azure-edition-core",
                    Windows,
                    &[Hotpatch],
                ),
                entry(
                    w,
                    ws,
                    "2022-datacenter-azure-edition",
                    Windows,
                    &[SmbOverQuic, ExtendedNetwork],
                ),
                entry(
                    w,
                    ws,
                    "2022-datacenter-azure-edition-core",
                    Windows,
                    &[Hotpatch, SmbOverQuic, ExtendedNetwork],
                ),
            ],
        }
    }
}

fn sku_matches(pattern: &str, sku: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => sku
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
        None => pattern.eq_ignore_ascii_case(sku),
    }
}

pub fn describe(image: &ImageReference) -> String {
    format!("{}/{}/{}", image.publisher, image.offer, image.sku)
}

impl ImageCatalog {
    /// Parse a catalog from YAML, with errors that name the field.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let catalog: ImageCatalog =
            serde_norway::from_str(text).map_err(|e| format!("image catalog: {e}"))?;
        for (i, image) in catalog.images.iter().enumerate() {
            for (field, value) in [
                ("publisher", &image.publisher),
                ("offer", &image.offer),
                ("sku", &image.sku),
            ] {
                if value.trim().is_empty() {
                    return Err(format!(
                        "image catalog: images[{i}].{field} must not be empty"
                    ));
                }
            }
        }
        Ok(catalog)
    }

    /// The catalog entry for an image, if any (the first that matches).
    pub fn lookup(&self, image: &ImageReference) -> Option<&CatalogImage> {
        self.images.iter().find(|e| {
            e.publisher.eq_ignore_ascii_case(&image.publisher)
                && e.offer.eq_ignore_ascii_case(&image.offer)
                && sku_matches(&e.sku, &image.sku)
        })
    }

    /// Check a VM's patch mode and capabilities against its image.
    pub fn check(&self, spec: &VirtualMachineSpec) -> Vec<ImageProblem> {
        let image = describe(&spec.os.image);
        let found = self
            .lookup(&spec.os.image)
            .filter(|e| e.os == spec.os.os_type);
        let mut problems = Vec::new();
        let mode = spec
            .patch_settings
            .patch_mode
            .unwrap_or_else(|| PatchMode::default_for(spec.os.os_type));
        if mode == PatchMode::AutomaticByPlatform && !found.is_some_and(|e| e.automatic_by_platform)
        {
            problems.push(ImageProblem::PatchModeUnsupported {
                image: image.clone(),
            });
        }
        let mut missing: Vec<Capability> = spec
            .capabilities
            .iter()
            .filter(|c| !found.is_some_and(|e| e.capabilities.contains(c)))
            .copied()
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            problems.push(ImageProblem::CapabilityMissing { image, missing });
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::*;

    fn vm(publisher: &str, offer: &str, sku: &str, os: OsType) -> VirtualMachineSpec {
        VirtualMachineSpec {
            management: Management::default(),
            os: OsProfile {
                os_type: os,
                image: ImageReference {
                    publisher: publisher.into(),
                    offer: offer.into(),
                    sku: sku.into(),
                    version: "latest".into(),
                },
            },
            placement: Placement {
                region: "westeurope".into(),
                zone: None,
                availability_set: None,
                update_domain: None,
                fault_domain: None,
            },
            time_zone: "UTC".into(),
            patch_settings: PatchSettings {
                patch_mode: Some(PatchMode::AutomaticByPlatform),
                enable_automatic_updates: None,
            },
            capabilities: vec![],
            health_check: None,
        }
    }

    #[test]
    fn seed_images_support_automatic_by_platform() {
        let c = ImageCatalog::default();
        for (p, o, s, os) in [
            ("Canonical", "UbuntuServer", "18.04-LTS", OsType::Linux),
            ("Redhat", "RHEL", "7.9", OsType::Linux),
            // The distributions the agent supports, and the examples `kubectl explain` gives.
            ("resf", "rockylinux-x86_64", "9-base", OsType::Linux),
            ("almalinux", "almalinux-x86_64", "9-gen2", OsType::Linux),
            ("Fedora", "fedora-cloud", "41", OsType::Linux),
            ("Debian", "debian-13", "13-gen2", OsType::Linux),
            (
                "Canonical",
                "0001-com-ubuntu-server-jammy",
                "22_04-lts-gen2",
                OsType::Linux,
            ),
            ("RedHat", "RHEL", "9-lvm", OsType::Linux),
            (
                "MicrosoftWindowsServer",
                "WindowsServer",
                "2012-R2-Datacenter",
                OsType::Windows,
            ),
            (
                "MicrosoftWindowsServer",
                "WindowsServer",
                "2019-Datacenter-Core",
                OsType::Windows,
            ),
        ] {
            assert_eq!(c.check(&vm(p, o, s, os)), vec![], "{p}/{o}/{s}");
        }
    }

    #[test]
    fn unknown_image_with_automatic_by_platform_is_reported() {
        let c = ImageCatalog::default();
        let problems = c.check(&vm("Example", "Custom", "1", OsType::Linux));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .to_string()
                .contains("AutomaticByPlatform is not supported on image Example/Custom/1")
        );
        // The same image with the Linux default mode is fine.
        let mut spec = vm("Example", "Custom", "1", OsType::Linux);
        spec.patch_settings.patch_mode = None;
        assert_eq!(c.check(&spec), vec![]);
    }

    #[test]
    fn capability_matrix_is_the_seed_one() {
        use Capability::*;
        let c = ImageCatalog::default();
        let w = "MicrosoftWindowsServer";
        let cases = [
            (
                "2019-datacenter-azure-edition-core",
                vec![Hotpatch],
                vec![SmbOverQuic, ExtendedNetwork],
            ),
            (
                "2022-datacenter-azure-edition",
                vec![SmbOverQuic, ExtendedNetwork],
                vec![Hotpatch],
            ),
            (
                "2022-datacenter-azure-edition-core",
                vec![Hotpatch, SmbOverQuic, ExtendedNetwork],
                vec![],
            ),
            (
                "2019-Datacenter",
                vec![],
                vec![Hotpatch, SmbOverQuic, ExtendedNetwork],
            ),
        ];
        for (sku, has, lacks) in cases {
            let mut spec = vm(w, "WindowsServer", sku, OsType::Windows);
            spec.capabilities = has.clone();
            assert_eq!(c.check(&spec), vec![], "{sku} should have {has:?}");
            for cap in lacks {
                spec.capabilities = vec![cap];
                let p = c.check(&spec);
                assert_eq!(
                    p,
                    vec![ImageProblem::CapabilityMissing {
                        image: format!("{w}/WindowsServer/{sku}"),
                        missing: vec![cap]
                    }]
                );
            }
        }
    }

    #[test]
    fn catalog_yaml_overrides_and_errors_name_the_field() {
        let c = ImageCatalog::from_yaml(
            "images:\n- publisher: Example\n  offer: Custom\n  sku: '1*'\n  os: Linux\n  automaticByPlatform: true\n",
        )
        .expect("parses");
        assert_eq!(
            c.check(&vm("example", "custom", "1.2", OsType::Linux)),
            vec![]
        );
        let err =
            ImageCatalog::from_yaml("images:\n- publisher: X\n  offer: Y\n  sku: Z\n  os: Plan9\n")
                .expect_err("bad os");
        assert!(err.contains("os") && err.contains("Linux"), "{err}");
        let err = ImageCatalog::from_yaml(
            "images:\n- publisher: ''\n  offer: Y\n  sku: Z\n  os: Linux\n",
        )
        .expect_err("empty");
        assert!(err.contains("images[0].publisher"), "{err}");
    }
}

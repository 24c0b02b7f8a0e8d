//! Deterministic image generation: seeded tar+gzip layers, configs, manifests and indexes.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;

use super::{Blob, BuiltImage, Format, ImageSpec, Layer, Platform};
use crate::common::util::sha256_digest;

/// splitmix64: tiny deterministic PRNG, good enough for test content.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Builds a tar archive from `(path, mode, content)` entries (directories
/// when content is `None`) with fixed metadata.
fn tar_archive(entries: &[(&str, u32, Option<&[u8]>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, content) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(*mode);
        match content {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, path, *data)
                    .expect("append file to in-memory tar");
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .expect("append directory to in-memory tar");
            }
        }
    }
    builder.into_inner().expect("finish in-memory tar")
}

/// gzip with a fixed header (no mtime/filename), so output is deterministic.
fn gzip(data: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::with_capacity(data.len() / 2 + 64), level);
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("finish gzip stream")
}

fn layer_from_tar(tar: Vec<u8>, format: Format, level: flate2::Compression) -> Layer {
    let diff_id = sha256_digest(&tar);
    Layer {
        blob: Blob::new(format.layer_type(), gzip(&tar, level)),
        diff_id,
    }
}

/// A small layer: a directory and a few text/binary files whose content is
/// derived from `seed`.
pub fn small_layer(seed: u64, format: Format) -> Layer {
    let mut rng = SplitMix64(seed);
    let mut random = vec![0u8; 512 + (seed % 512) as usize];
    rng.fill(&mut random);
    let hello = format!("hello from stevedore test layer, seed {seed}\n");
    let script = format!("#!/bin/sh\necho seed {seed}\n");
    let dir = format!("data-{seed}/");
    let bin_path = format!("data-{seed}/random.bin");
    let tar = tar_archive(&[
        ("etc/", 0o755, None),
        ("etc/stevedore-seed", 0o644, Some(hello.as_bytes())),
        (&dir, 0o755, None),
        (&bin_path, 0o644, Some(&random)),
        ("usr/local/bin/hello.sh", 0o755, Some(script.as_bytes())),
    ]);
    layer_from_tar(tar, format, flate2::Compression::default())
}

/// A layer holding one file of `size` pseudo-random (incompressible) bytes.
/// gzip runs at level 0 (stored blocks): compressing random data gains
/// nothing and would be slow in debug builds.
pub fn large_layer(seed: u64, size: usize, format: Format) -> Layer {
    let mut data = vec![0u8; size];
    SplitMix64(seed ^ 0x5EED_1A49_E000_0000).fill(&mut data);
    let tar = tar_archive(&[
        ("large/", 0o755, None),
        ("large/blob.bin", 0o644, Some(&data)),
    ]);
    drop(data);
    layer_from_tar(tar, format, flate2::Compression::none())
}

/// Generates config, layers and manifest for one platform.
pub fn build_image(spec: &ImageSpec, platform: &Platform) -> BuiltImage {
    // Mix the platform into the seed so each platform has distinct layers.
    let platform_salt = platform.architecture.bytes().fold(0u64, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let base = spec.seed.wrapping_mul(1_000_003) ^ platform_salt.wrapping_mul(0x1_0000_0001);
    let mut layers: Vec<Layer> = (0..spec.small_layers as u64)
        .map(|i| small_layer(base.wrapping_add(i), spec.format))
        .collect();
    if let Some(size) = spec.large_layer {
        layers.push(large_layer(base, size, spec.format));
    }

    let config = json!({
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
        "Cmd": ["/usr/local/bin/hello.sh"],
        "Labels": { "org.example.stevedore.test-seed": spec.seed.to_string() }
    });
    assemble_image(platform, spec.format, layers, config)
}

/// Config blob and manifest over `layers`, with `config` as the image config's `config`
/// object (`Env`, `Cmd`, …).
fn assemble_image(
    platform: &Platform,
    format: Format,
    layers: Vec<Layer>,
    config: serde_json::Value,
) -> BuiltImage {
    let created = "2024-01-01T00:00:00Z";
    let mut config = json!({
        "created": created,
        "architecture": platform.architecture,
        "os": platform.os,
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()
        },
        "history": layers.iter().enumerate().map(|(i, _)| json!({
            "created": created,
            "created_by": format!("stevedore test layer {i}")
        })).collect::<Vec<_>>()
    });
    if let Some(variant) = &platform.variant {
        config["variant"] = variant.clone().into();
    }
    let config = Blob::new(
        format.config_type(),
        serde_json::to_vec(&config).expect("serialize image config"),
    );

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": format.manifest_type(),
        "config": config.descriptor(),
        "layers": layers.iter().map(|l| l.blob.descriptor()).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(
        format.manifest_type(),
        serde_json::to_vec_pretty(&manifest).expect("serialize image manifest"),
    );
    BuiltImage {
        platform: platform.clone(),
        format,
        config,
        layers,
        manifest,
    }
}

/// A runnable linux/amd64 image of a program of this host: one layer with `cmd[0]` and the
/// shared libraries and dynamic loader `ldd` names for it, at their host paths (symlinks
/// followed), and `cmd` as the image's command. `host_program_image(&["/bin/sleep",
/// "infinity"])` is a container that stays up until it is stopped.
pub fn host_program_image(cmd: &[&str]) -> BuiltImage {
    let program = cmd.first().expect("a command");
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .expect("run ldd");
    assert!(out.status.success(), "ldd {program} failed");
    let ldd = String::from_utf8_lossy(&out.stdout);
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)".
    let libs = ldd.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        let first = words.next()?;
        match words.next() {
            Some("=>") => words.next().filter(|p| p.starts_with('/')),
            _ => Some(first).filter(|p| p.starts_with('/')),
        }
    });
    let mut files = BTreeMap::new();
    for path in std::iter::once(*program).chain(libs) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        files.insert(path.trim_start_matches('/').to_owned(), bytes);
    }
    let dirs: std::collections::BTreeSet<String> = files
        .keys()
        .flat_map(|path| {
            let parts: Vec<&str> = path.split('/').collect();
            (1..parts.len())
                .map(|n| format!("{}/", parts[..n].join("/")))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut entries: Vec<(&str, u32, Option<&[u8]>)> =
        dirs.iter().map(|d| (d.as_str(), 0o755, None)).collect();
    entries.extend(
        files
            .iter()
            .map(|(path, bytes)| (path.as_str(), 0o755, Some(bytes.as_slice()))),
    );
    let layer = layer_from_tar(
        tar_archive(&entries),
        Format::Oci,
        flate2::Compression::default(),
    );
    let config = json!({ "Env": ["PATH=/usr/bin:/bin"], "Cmd": cmd });
    assemble_image(&Platform::linux_amd64(), Format::Oci, vec![layer], config)
}

/// An OCI image index (or Docker manifest list) over `images`.
pub fn build_index(images: &[BuiltImage], format: Format) -> Blob {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": format.index_type(),
        "manifests": images.iter().map(|img| {
            let mut d = img.manifest.descriptor();
            d["platform"] = img.platform.json();
            d
        }).collect::<Vec<_>>(),
    });
    Blob::new(
        format.index_type(),
        serde_json::to_vec_pretty(&index).expect("serialize image index"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic() {
        let a = build_image(&ImageSpec::seed(7), &Platform::linux_amd64());
        let b = build_image(&ImageSpec::seed(7), &Platform::linux_amd64());
        let c = build_image(&ImageSpec::seed(7), &Platform::linux_arm64());
        assert_eq!(a.manifest.digest, b.manifest.digest);
        assert_ne!(a.manifest.digest, c.manifest.digest);
        assert_ne!(a.layers[0].blob.digest, a.layers[1].blob.digest);
    }

    #[test]
    fn layers_are_valid_gzip_tar() {
        let layer = small_layer(3, Format::Oci);
        let decoder = flate2::read::GzDecoder::new(&layer.blob.bytes[..]);
        let mut archive = tar::Archive::new(decoder);
        let names: Vec<String> = archive
            .entries()
            .expect("tar entries")
            .map(|e| {
                e.expect("tar entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert!(
            names.contains(&"etc/stevedore-seed".to_string()),
            "{names:?}"
        );

        let large = large_layer(3, 100_000, Format::Oci);
        assert!(large.blob.size() > 100_000, "random data must not compress");
    }
}

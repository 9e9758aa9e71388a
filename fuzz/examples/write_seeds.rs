//! Writes the seed corpus (`shoal_fuzz::seeds`) to `seeds/<target>/`, replacing what is
//! there: `scripts/fuzz.sh seeds`. Run it after a change to an encoding or a format, and
//! commit the result.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for target in shoal_fuzz::seeds::TARGETS {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
    }
    let seeds = shoal_fuzz::seeds::all();
    for seed in &seeds {
        std::fs::write(root.join(seed.target).join(&seed.name), &seed.bytes)?;
    }
    println!("wrote {} seeds under {}", seeds.len(), root.display());
    Ok(())
}

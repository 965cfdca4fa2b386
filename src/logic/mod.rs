//! Pure logic, unit- and property-tested without a cluster: profile resolution, the image catalog,
//! the VM and rollout decisions, assignment, ring membership, windows, the wave planner, durations.

pub mod assign;
pub mod catalog;
pub mod conditions;
pub mod duration;
pub mod enroll;
pub mod events;
pub mod planner;
#[cfg(any(test, feature = "bench"))]
pub mod prometheus;
pub mod resolve;
pub mod rings;
pub mod rollout;
pub mod text;
pub mod vm;
pub mod window;

pub mod api;
pub mod controller;
pub mod logic;

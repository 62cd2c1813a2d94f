#![allow(unused)]
#[derive(Debug)] pub struct FaultFs; #[derive(Debug)] pub struct FaultPlan;

module granary.invalid/bench/fleet_load

go 1.22

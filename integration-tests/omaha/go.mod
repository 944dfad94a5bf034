module lacave-tests/omaha

go 1.24

require github.com/flatcar/go-omaha v0.0.2-0.20251014063321-4998849bd39c

require (
	github.com/blang/semver/v4 v4.0.0 // indirect
	github.com/google/uuid v1.3.0 // indirect
)

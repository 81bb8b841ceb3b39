package main

// The backplane backends the tool can open by URL with -backplane.
import (
	_ "github.com/wshub/wshub/backplane/memory"
	_ "github.com/wshub/wshub/backplane/redis"
)

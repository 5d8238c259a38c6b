module github.com/git-relay/git-relay/deploy/vercel

go 1.26.8

require github.com/git-relay/git-relay v0.0.0-00010101000000-000000000000

replace github.com/git-relay/git-relay => ../..

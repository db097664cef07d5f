"""Use cases: one function per action. The only layer that knows the rules of the mission
(who may see, change, share or export what; which states allow which action)."""

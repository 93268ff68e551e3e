"""tensorrt_llm/module.py: ``Module`` keeps Parameter attributes in ``_parameters`` and Module attributes in
``_modules`` (``None`` entries are skipped when iterating); ``named_parameters`` joins names with dots;
``ModuleList`` names its children "0", "1", ...
"""

from tensorrt_llm.parameter import Parameter


class Module:
    def __init__(self) -> None:
        self.__dict__["_modules"] = {}
        self.__dict__["_parameters"] = {}

    def __getattr__(self, name):
        for store in ("_parameters", "_modules"):
            members = self.__dict__.get(store)
            if members is not None and name in members:
                return members[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name, value) -> None:
        if isinstance(value, Parameter):
            self.__dict__.pop(name, None)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self.__dict__.pop(name, None)
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def register_parameter(self, name, param) -> None:
        self._parameters[name] = param

    def named_modules_with_parent(self, prefix="", parent=None):
        """Pre-order walk; after yielding a module it walks the parent's *current* child of that name, so a pass
        may replace the module it was just given and the walk goes on into the replacement."""
        yield prefix, self, parent
        module = parent._modules[prefix.rsplit(".", 1)[-1]] if parent is not None else self
        for name, child in list(module._modules.items()):
            if child is not None:
                yield from child.named_modules_with_parent(f"{prefix}.{name}" if prefix else name, module)

    def named_modules(self):
        for name, module, _ in self.named_modules_with_parent():
            yield name, module

    def named_parameters(self):
        for prefix, module in self.named_modules():
            for name, param in module._parameters.items():
                if param is not None:
                    yield (f"{prefix}.{name}" if prefix else name), param


class ModuleList(Module):
    def __init__(self, modules) -> None:
        super().__init__()
        for index, module in enumerate(modules):
            self._modules[str(index)] = module

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)
